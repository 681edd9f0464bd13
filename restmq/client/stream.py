"""A queue's Server-Sent Events stream (``GET /c/<queue>``) as an iterator of messages."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from restmq.client.errors import BrokerUnavailable, RestMQError
from restmq.client.message import Message, Settler
from restmq.client.transport import Transport, path


class Stream:
    """Messages as the broker pushes them: the backlog first, then each new one.

    The connection is open once the object exists. Iteration ends when the broker ends
    the stream (the queue was purged, or the broker is stopping); a connection that breaks
    raises BrokerUnavailable. ``close()`` (or leaving the ``with`` block) ends it; on a
    leased stream the messages not yet acked then go back to the head of the queue.
    """

    def __init__(
        self,
        transport: Transport,
        client: Settler,
        queue: str,
        params: dict[str, Any],
        idle_timeout: float | None,
    ) -> None:
        self.queue = queue
        self._client = client
        self._exits = contextlib.ExitStack()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        response = self._exits.enter_context(
            transport.stream(
                path("c", queue), idle_timeout=idle_timeout, params=params, headers=headers
            )
        )
        self._url = transport.url
        self._events = EventSource(response).iter_sse()
        self._closed = False

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        if self._closed:
            raise StopIteration
        try:
            for event in self._events:
                if event.event == "end":  # purged, or the broker is stopping
                    break
                if event.event == "message" and event.data:
                    return Message.from_answer(self.queue, _json(event.data), self._client)
        except httpx.HTTPError as exc:
            self.close()
            reason = str(exc) or type(exc).__name__
            raise BrokerUnavailable(
                f"the stream of {self.queue!r} broke: {reason}", error=reason
            ) from None
        except SSEError as exc:  # the answer is not an event stream
            self.close()
            raise RestMQError(f"{self._url} did not answer with an event stream: {exc}") from None
        self.close()
        raise StopIteration

    def close(self) -> None:
        self._closed = True
        self._exits.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise RestMQError(f"the stream sent something that is not JSON: {data[:80]!r}") from None
