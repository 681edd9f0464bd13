"""--header-timeout counts from a connection's last answer: a keep-alive client that
keeps asking is never cut off, an idle one is closed about one timeout after its last
answer (in-process app on the broker's connection class, real sockets)."""

from __future__ import annotations

import time

import cyclone.web
import pytest_twisted
from twisted.internet import reactor, task, threads

from restmq.web.connection.cyclone_fixes import FixedChunked
from restmq.web.connection.http_policy import BrokerHTTPConnection
from restmq.web.handlers.base import BaseHandler
from tests import support as wire

TIMEOUT = 0.6


class PingHandler(BaseHandler):
    def get(self) -> None:
        self.answer_text("pong\r\n")


class PingApp(cyclone.web.Application):
    protocol = BrokerHTTPConnection
    noisy = False

    def __init__(self) -> None:
        super().__init__(
            [(r"/ping", PingHandler)],
            transforms=[FixedChunked],
            max_body=1024,
            header_timeout=TIMEOUT,
        )


def blocking(fn, *args):
    return threads.deferToThread(fn, *args)


def ping_for(port: int, seconds: float) -> tuple[object, float]:
    """Ask every TIMEOUT/3 s for ``seconds``; the socket, its reader and when the last
    answer came."""
    sock = wire.connect(port)
    reader = wire.Reader(sock)
    until = time.monotonic() + seconds
    while True:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        assert reader.read_response().body == b"pong\r\n"
        last = time.monotonic()
        if last > until:
            return (sock, reader), last
        time.sleep(TIMEOUT / 3)


@pytest_twisted.ensureDeferred
async def test_a_busy_keep_alive_connection_outlives_the_timeout_and_an_idle_one_does_not():
    listening = reactor.listenTCP(0, PingApp(), interface="127.0.0.1")
    try:
        port = listening.getHost().port
        (sock, reader), last = await blocking(ping_for, port, 3 * TIMEOUT)
        assert await blocking(reader.closed, 10)  # now idle: closed by the server
        idle_for = time.monotonic() - last
        assert TIMEOUT * 0.8 <= idle_for < TIMEOUT + 2, idle_for
        sock.close()
    finally:
        await listening.stopListening()
        await task.deferLater(reactor, 0, lambda: None)
