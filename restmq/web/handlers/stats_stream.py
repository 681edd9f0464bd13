"""``GET /stats/`` as Server-Sent Events: every queue's figures, live (the dashboard).

A client that asks for ``text/event-stream`` (as every EventSource does) gets a
``stats`` event with the ``/stats/`` figures at once and after each change, an
``unavailable`` event while storage cannot be read, and ``end`` when the broker
stops. The figures come from the operations' shared feed (restmq.operations.stats_feed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from restmq.web import shapes
from restmq.web.connection import held_response
from restmq.web.handlers.base import encode_json

if TYPE_CHECKING:
    from restmq.operations.results import AllStats
    from restmq.web.handlers.base import BaseHandler

_encoded: tuple[object, bytes] = (None, b"")  # the last figures and their event


def stats_event(stats: AllStats) -> bytes:
    """The ``stats`` event of ``stats``, encoded once however many watch it."""
    global _encoded
    if _encoded[0] is not stats:
        data = encode_json(shapes.stats_event(stats))
        _encoded = (stats, f"event: stats\ndata: {data}\n\n".encode())
    return _encoded[1]


@implementer(IPushProducer)
class StatsEventStream:
    """One watcher of the figures, writing to one open HTTP response.

    A watcher whose socket is full skips figures rather than buffering them: when
    the socket drains it is sent the newest ones.
    """

    def __init__(self, handler: BaseHandler) -> None:
        self.handler = handler
        self.gone = False
        self._paused = False
        self._waiting: bytes | None = None  # the newest event held while paused

    def open(self) -> None:
        handler = self.handler
        held_response.hold_open(handler, f"{held_response.EVENT_STREAM}; charset=UTF-8")
        self._write(b"retry: 2000\n\n")
        handler.request.connection.transport.registerProducer(self, True)
        handler.operations.watch_stats(self)

    def client_gone(self) -> None:
        if not self.gone:
            self.gone = True
            self.handler.operations.unwatch_stats(self)

    # -- restmq.operations.stats_feed.StatsWatcher ----------------------------------------

    def figures(self, stats: AllStats) -> None:
        self._send(stats_event(stats))

    def unavailable(self, reason: str) -> None:
        self._send(f"event: unavailable\ndata: {encode_json({'error': reason})}\n\n".encode())

    def heartbeat(self) -> None:
        if not self._paused:
            self._write(b": keep-alive\n\n")

    def end(self, reason: str) -> None:
        self.gone = True
        held_response.end(self.handler, self, b"event: end\ndata: null\n\n")

    # -- IPushProducer ----------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._write(waiting)

    def stopProducing(self) -> None:
        self.client_gone()

    # -- writing ----------------------------------------------------------------

    def _send(self, event: bytes) -> None:
        if self._paused:
            self._waiting = event
        else:
            self._write(event)

    def _write(self, data: bytes) -> None:
        handler = self.handler
        if not self.gone and held_response.can_write(handler):
            handler.write(data)
            handler.flush()
