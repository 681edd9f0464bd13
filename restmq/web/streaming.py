"""``GET /c/<queue>``: COMET (one JSON line per message) or Server-Sent Events.

``?lease=S&prefetch=P`` makes it a leased stream: each message carries its
``receipt``, at most P unacknowledged; acks are ``DELETE /q/<queue>?receipt=R``.
"""

from __future__ import annotations

from restmq import acl, shapes
from restmq.consumers import CLOSE_NORMAL, StreamConsumer
from restmq.core import Message
from restmq.web import cyclone_fixes
from restmq.web.base import BaseHandler, encode_json


class HttpStreamConsumer(StreamConsumer):
    """A consumer holding an HTTP response open; each message is written and flushed."""

    def __init__(self, handler: StreamHandler, queue: str, callback: str | None) -> None:
        super().__init__(queue, handler.request.remote_ip)
        self.handler = handler
        self.callback = callback

    @staticmethod
    def payload(message: Message) -> str:
        return encode_json(shapes.stream_message(message))

    def encode(self, message: Message) -> bytes:
        text = self.payload(message)
        if self.callback:
            return f"{self.callback}({text});\r\n".encode()
        return (text + "\r\n").encode()

    def write(self, data: bytes) -> None:
        handler = self.handler
        if not cyclone_fixes.is_finished(handler):
            handler.write(data)
            handler.flush()

    def _last_words(self) -> bytes:
        # The original wrote null before ending a purged stream.
        return f"{self.callback}(null);\r\n".encode() if self.callback else b"null\r\n"

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        self.gone = True
        handler = self.handler
        if not cyclone_fixes.is_finished(handler) and not cyclone_fixes.client_is_gone(handler):
            handler.write(self._last_words())
            handler.finish()
        self._release()

    def abort(self) -> None:
        self.gone = True
        self._release()
        self.handler.request.connection.transport.abortConnection()

    def _release(self) -> None:
        transport = self.handler.request.connection.transport
        if getattr(transport, "producer", None) is self:
            transport.unregisterProducer()


class SseConsumer(HttpStreamConsumer):
    """Server-Sent Events: ``id:`` the key, ``data:`` the JSON object, heartbeats."""

    kind = "sse"

    def encode(self, message: Message) -> bytes:
        return f"id: {message.key}\ndata: {self.payload(message)}\n\n".encode()

    def heartbeat(self) -> None:
        self.write(b": keep-alive\n\n")

    def _last_words(self) -> bytes:
        return b"event: end\ndata: null\n\n"


class CometConsumer(HttpStreamConsumer):
    kind = "comet"


class StreamHandler(BaseHandler):
    """Binds a streaming consumer to a queue, existing or not, until the client leaves."""

    access = {"GET": acl.COMET}

    def get(self, queue: str) -> None:
        callback = self.callback()
        sse = "text/event-stream" in self.request.headers.get("Accept", "")
        consumer = SseConsumer(self, queue, None) if sse else CometConsumer(self, queue, callback)
        # a bad name, lease or prefetch, or TooManyConsumers: no stream
        self.operations.open_stream(consumer, self.arg("lease"), self.arg("prefetch"))
        self.consumer = consumer
        cyclone_fixes.keep_open(self)  # the response stays open
        cyclone_fixes.stream_without_keep_alive(self)
        if sse:
            self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
        else:
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # tell nginx not to buffer the stream
        self.flush()  # headers go out now; messages follow as they come
        if sse:
            consumer.write(b"retry: 2000\n\n")
        self.request.connection.transport.registerProducer(consumer, True)

    def on_client_gone(self) -> None:
        consumer = getattr(self, "consumer", None)
        if consumer is not None:
            self.operations.close_stream(consumer)
