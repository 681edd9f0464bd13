"""What a stream's peer has not acknowledged yet: Twisted's write buffer and the
kernel's send queue of its TCP connection (Linux).

A stream counts the bytes it hands its connection; ``unacknowledged`` adds up what
still waits above the wire: Twisted's userspace buffer and the socket's send queue
(``SIOCOUTQ``: sent but not acknowledged, and not sent yet). A message whose last
byte came before that tail reached the peer's TCP (restmq.delivery.socket_acks).

Over TLS the counts are of plaintext while the buffers below hold records: a record
is never shorter than its plaintext, so the wire's unacknowledged bytes bound the
plaintext's, plus one whole record (a peer cannot read a record it has only part
of), plus the plaintext TLS still holds. That can only make a message look
unacknowledged when it was not: it may come again, it is never lost.

``TCP_NOTSENT_LOWAT`` keeps the kernel from taking far more than it can send: what a
slow consumer has not taken stays in the broker's backlog, held in ``--max-buffered``
and ``--consumer-buffer`` and put back at a stop, rather than in megabytes of kernel
buffer. 32 KiB keeps a fast link busy (Twisted adds up to 128 KiB per wake-up on top).

Elsewhere (no ``SIOCOUTQ`` on sockets, or not a TCP socket) ``track`` gives None and
streams keep the old rule: written means delivered.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import sys
import termios

from twisted.protocols.tls import TLSMemoryBIOProtocol

#: Linux: the bytes of a TCP socket's send queue its peer has not acknowledged
SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25 if SIOCOUTQ is not None else None)
NOTSENT_LOWAT = 32 * 1024
TLS_RECORD = 16 * 1024 + 256  # the largest TLS record with its header, padding and tag


class SendQueue:
    """The bytes one stream handed its connection, and how many its peer has not acknowledged."""

    __slots__ = ("_raw", "_tls", "handed")

    def __init__(self, raw, tls: TLSMemoryBIOProtocol | None) -> None:
        self.handed = 0  # bytes handed to the connection's (top) transport
        self._raw = raw  # the TCP transport: its socket and Twisted's buffer
        self._tls = tls

    def count(self, size: int) -> None:
        """``size`` more bytes were handed to the connection."""
        self.handed += size

    def unacknowledged(self) -> int | None:
        """At least the bytes of the last handed that the peer's TCP did not
        acknowledge; None once the socket is closed."""
        raw = self._raw
        sock = getattr(raw, "socket", None)
        if sock is None:
            return None
        try:
            kernel = _outq(sock.fileno())
        except (OSError, ValueError):
            return None  # closed
        unacked = kernel + len(raw.dataBuffer) - raw.offset + raw._tempDataLen
        tls = self._tls
        if tls is not None:
            if unacked:
                unacked += TLS_RECORD
            unacked += sum(map(len, tls._appSendBuffer))
            aggregator = getattr(tls, "_aggregator", None)  # Twisted's BufferingTLSTransport
            unacked += sum(map(len, getattr(aggregator, "_buffer", ())))
        return unacked


def _outq(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, SIOCOUTQ, b"\0\0\0\0"))[0]


def track(transport) -> SendQueue | None:
    """A SendQueue for a stream on ``transport``, which gets ``TCP_NOTSENT_LOWAT``
    too; None where the system cannot tell what the peer acknowledged."""
    if SIOCOUTQ is None:
        return None
    if isinstance(transport, TLSMemoryBIOProtocol):  # TLS wrapping the connection (workers)
        tls, raw = transport, transport.transport
    elif getattr(transport, "TLS", False):  # TLS started on the TCP transport (listenSSL)
        tls, raw = getattr(transport, "protocol", None), transport
        if not isinstance(tls, TLSMemoryBIOProtocol):
            return None
    else:
        tls, raw = None, transport
    sock = getattr(raw, "socket", None)
    if not isinstance(sock, socket.socket) or not hasattr(raw, "dataBuffer"):
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None  # SIOCOUTQ counts differently on other sockets
    try:
        _outq(sock.fileno())
    except OSError:
        return None
    if TCP_NOTSENT_LOWAT is not None:
        # An older kernel refuses it: it keeps more, and SIOCOUTQ says so.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    return SendQueue(raw, tls)
