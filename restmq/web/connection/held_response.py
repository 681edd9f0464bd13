"""An HTTP response held open to stream into: COMET and SSE queue streams, and the
live ``/stats/`` feed open, write and end their responses the same way."""

from __future__ import annotations

import cyclone.web

from restmq.web.connection import cyclone_fixes

EVENT_STREAM = "text/event-stream"


def wants_event_stream(handler: cyclone.web.RequestHandler) -> bool:
    """Whether the client asked for Server-Sent Events (as every EventSource does)."""
    return EVENT_STREAM in handler.request.headers.get("Accept", "")


def hold_open(handler: cyclone.web.RequestHandler, content_type: str) -> None:
    """Send the headers now and keep the response open for what follows."""
    cyclone_fixes.keep_open(handler)
    cyclone_fixes.stream_without_keep_alive(handler)
    handler.set_header("Content-Type", content_type)
    handler.set_header("Cache-Control", "no-cache")
    handler.set_header("X-Accel-Buffering", "no")  # tell nginx not to buffer the stream
    handler.flush()


def can_write(handler: cyclone.web.RequestHandler) -> bool:
    return not cyclone_fixes.is_finished(handler)


def end(handler: cyclone.web.RequestHandler, producer: object, last_words: bytes) -> None:
    """Finish with ``last_words`` unless the client is gone already; ``producer`` stops
    being the connection's producer."""
    if can_write(handler) and not cyclone_fixes.client_is_gone(handler):
        handler.write(last_words)
        handler.finish()
    stop_producing_for(handler, producer)


def stop_producing_for(handler: cyclone.web.RequestHandler, producer: object) -> None:
    transport = handler.request.connection.transport
    if getattr(transport, "producer", None) is producer:
        transport.unregisterProducer()
