"""A WebSocket frame that announces more than the incoming message limit (1 MiB) is
refused as soon as its header arrives: close code 1009, and the socket is closed,
whatever the client sends (or does not send) afterwards."""

from __future__ import annotations

import socket
import time

import pytest

from tests import support as wire
from tests.support import websocket_frame_header, websocket_handshake

CLOSE_TOO_BIG = 1009


def upgraded(port: int, queue: str) -> tuple[socket.socket, wire.Reader]:
    sock = wire.connect(port)
    sock.sendall(websocket_handshake(f"/ws/{queue}"))
    reader = wire.Reader(sock)
    _, status, _, _ = reader.read_head()
    assert status == 101
    return sock, reader


def read_close_frame(reader: wire.Reader) -> int:
    """The close code of the server's next frame, which must be a close frame."""
    first, second = reader.read_exactly(2)
    assert first & 0x0F == 0x8, f"not a close frame: opcode {first & 0x0F}"
    payload = reader.read_exactly(second & 0x7F)
    return int.from_bytes(payload[:2], "big")


@pytest.mark.parametrize("announced", [1 << 63, (1 << 20) + 1, 1 << 32])
def test_a_frame_announcing_too_much_is_closed_with_1009_at_once(shared_broker, queue, announced):
    sock, reader = upgraded(shared_broker.port, queue)
    with sock:
        started = time.monotonic()
        sock.sendall(websocket_frame_header(announced, opcode=0x2))  # and no payload
        assert read_close_frame(reader) == CLOSE_TOO_BIG
        assert reader.closed(5)
        assert time.monotonic() - started < 3


def test_frames_within_the_limit_still_echo_after_a_split_header(shared_broker, queue):
    sock, reader = upgraded(shared_broker.port, queue)
    with sock:
        payload = b"x" * 70_000  # a 64-bit length field, sent a byte at a time
        frame = websocket_frame_header(len(payload), opcode=0x2) + payload
        for at in range(14):
            sock.sendall(frame[at : at + 1])
            time.sleep(0.01)
        sock.sendall(frame[14:])
        first, second = reader.read_exactly(2)
        assert (first & 0x0F, second & 0x7F) == (0x2, 127)
        assert int.from_bytes(reader.read_exactly(8), "big") == len(payload)
        assert reader.read_exactly(len(payload)) == payload
