"""``GET /c/<queue>``: COMET (one JSON line per message) or Server-Sent Events.

``?lease=S&prefetch=P`` makes it a leased stream: each message carries its
``receipt``, at most P unacknowledged; acks are ``DELETE /q/<queue>?receipt=R``.
"""

from __future__ import annotations

from restmq.access import acl
from restmq.delivery.stream_consumer import CLOSE_NORMAL, StreamConsumer
from restmq.engine.messages import Message
from restmq.web import shapes
from restmq.web.connection import held_response, send_queue
from restmq.web.handlers.base import BaseHandler, encode_json


class HttpStreamConsumer(StreamConsumer):
    """A consumer holding an HTTP response open; each message is written and flushed."""

    def __init__(self, handler: StreamHandler, queue: str, callback: str | None) -> None:
        super().__init__(queue, handler.request.remote_ip)
        self.handler = handler
        self.callback = callback
        self.connection = handler.request.connection
        if hasattr(self.connection, "bytes_out"):  # the broker's own HTTP connection
            self.acks = send_queue.track(self.connection.transport)

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
        if held_response.can_write(handler):
            before = self.connection.bytes_out  # with the chunk's framing
            handler.write(data)
            handler.flush()
            if self.acks is not None:
                self.acks.count(self.connection.bytes_out - before)

    def _last_words(self) -> bytes:
        # The original wrote null before ending a purged stream.
        return f"{self.callback}(null);\r\n".encode() if self.callback else b"null\r\n"

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        self.gone = True
        held_response.end(self.handler, self, self._last_words())

    def abort(self) -> None:
        self.gone = True
        held_response.stop_producing_for(self.handler, self)
        self.handler.request.connection.transport.abortConnection()


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
        sse = held_response.wants_event_stream(self)
        consumer = SseConsumer(self, queue, None) if sse else CometConsumer(self, queue, callback)
        # a bad name, lease or prefetch, or TooManyConsumers: no stream
        self.operations.open_stream(consumer, self.arg("lease"), self.arg("prefetch"))
        self.consumer = consumer
        content = held_response.EVENT_STREAM if sse else "text/plain"
        held_response.hold_open(self, f"{content}; charset=UTF-8")  # messages follow as they come
        if sse:
            consumer.write(b"retry: 2000\n\n")
        self.request.connection.transport.registerProducer(consumer, True)

    def on_client_gone(self) -> None:
        consumer = getattr(self, "consumer", None)
        if consumer is not None:
            self.operations.close_stream(consumer)
