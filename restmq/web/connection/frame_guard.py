"""Reads the length each incoming WebSocket frame announces, as its header arrives.

wsproto hands a message over piece by piece, so a frame that announces 2**63 bytes
and then sends nothing would keep its connection open for ever. The guard follows
the frame boundaries of the raw stream (RFC 6455 5.2) and says when a frame
announces more than the limit, before any of its payload has arrived.
"""

from __future__ import annotations

_MASKED = 0x80
_LENGTH_16 = 126
_LENGTH_64 = 127


def _header_size(head: bytes) -> int | None:
    """The size of a frame header, once its first two bytes are known."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    extended = 2 if length == _LENGTH_16 else 8 if length == _LENGTH_64 else 0
    return 2 + extended + (4 if head[1] & _MASKED else 0)


def _payload_length(head: bytes) -> int:
    length = head[1] & 0x7F
    if length == _LENGTH_16:
        return int.from_bytes(head[2:4], "big")
    if length == _LENGTH_64:
        return int.from_bytes(head[2:10], "big")
    return length


class FrameSizeGuard:
    """Follows the frames of one connection's incoming bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head = b""  # the header of the next frame, as far as it has arrived
        self._skip = 0  # payload bytes of the current frame still to come

    def too_big(self, data: bytes) -> bool:
        """Feed the next bytes; True once a frame announces more than ``limit`` bytes."""
        at, end = 0, len(data)
        while at < end:
            if self._skip:
                step = min(self._skip, end - at)
                self._skip -= step
                at += step
                continue
            size = _header_size(self._head)
            wanted = (size or 2) - len(self._head)
            self._head += data[at : at + wanted]
            at += wanted
            size = _header_size(self._head)
            if size is None or len(self._head) < size:
                continue
            length = _payload_length(self._head)
            self._head = b""
            if length > self.limit:
                return True
            self._skip = length
        return False
