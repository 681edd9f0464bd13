"""Stopping HTTP without losing an answer: the connections a stop must wait for.

Closing the listening port is not enough: kept-alive connections would go on
being served while storage shuts down, and a write answered "connection lost"
may well have been stored. While the broker stops, a request already being
served gets its real answer and then ``Connection: close``; a new request on a
kept-alive connection gets 503 (nothing was done); an idle connection is closed.
"""

from __future__ import annotations

import cyclone.web
from twisted.internet import defer, task
from twisted.logger import Logger

from restmq.web.connection.admission import BudgetedHTTPConnection
from restmq.web.connection.http_policy import raw_error_response

log = Logger(namespace="restmq.http")

STOPPING = "the broker is stopping; nothing was done: retry (on another broker, or once it is back)"


class OpenConnections:
    """The HTTP connections of one application, and whether it is stopping."""

    def __init__(self) -> None:
        self.stopping = False
        self._open: set[DrainingHTTPConnection] = set()
        self._all_closed: list[defer.Deferred] = []

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, connection: DrainingHTTPConnection) -> None:
        self._open.add(connection)
        if self.stopping:
            connection.wind_down()

    def closed(self, connection: DrainingHTTPConnection) -> None:
        self._open.discard(connection)
        if not self._open:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def stop(self) -> None:
        """Serve no further request: close idle connections, the others after their answer."""
        self.stopping = True
        for connection in list(self._open):
            connection.wind_down()

    async def wait_closed(self, reactor, timeout: float) -> None:
        """Wait until every connection has closed (its data sent); drop those still open
        after ``timeout`` seconds."""
        if self._open:
            waiter = defer.Deferred()
            self._all_closed.append(waiter)
            timer = reactor.callLater(timeout, waiter.cancel)
            try:
                await waiter
            except defer.CancelledError:
                log.warn("dropping {n} HTTP connection(s) still open after {s:g} s",
                         n=len(self._open), s=timeout)  # fmt: skip
                for connection in list(self._open):
                    connection.transport.abortConnection()
                await task.deferLater(reactor, 0, lambda: None)  # let the aborts land
            else:
                if timer.active():
                    timer.cancel()


class DrainingHTTPConnection(BudgetedHTTPConnection):
    """The broker's HTTP connection, which a stop winds down (see OpenConnections)."""

    bytes_out = 0  # answer bytes handed to the transport: streams count acks by it

    def write(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)
        super().write(chunk)

    def connectionMade(self):
        super().connectionMade()
        serve = self.request_callback

        def serve_unless_stopping(request):
            if self.factory.connections.stopping:
                self._refuse_stopping()
            else:
                serve(request)

        self.request_callback = serve_unless_stopping
        self.factory.connections.opened(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.connections.closed(self)

    def wind_down(self) -> None:
        self.close_after_answer()
        if not self.serving_request() and not self.receiving_head():
            self.transport.loseConnection()  # idle: no request begun

    def _refuse_stopping(self) -> None:
        self.stop_parsing()
        self.transport.write(
            raw_error_response(503, "Service Unavailable", STOPPING, {"Retry-After": "1"})
        )
        self.transport.loseConnection()


class CloseWhenStopping(cyclone.web.OutputTransform):
    """Answers begun while the broker stops say ``Connection: close`` (it will be)."""

    def __init__(self, request) -> None:
        self.connection = request.connection

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        if self.connection.factory.connections.stopping:
            headers["Connection"] = "close"
        return status_code, headers, chunk
