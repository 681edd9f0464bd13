"""``restmq tail``: a Server-Sent Events consumer of ``GET /c/<queue>``."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator

import click
from httpx_sse import EventSource, SSEError

from restmq.cli.connection import BrokerConnection
from restmq.cli.failures import Exit, Failure
from restmq.cli.output import message_line


class _TimeUp(Exception):
    """--timeout passed."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise _TimeUp in the main thread after ``seconds``, even while it waits on the socket
    (the broker's keep-alive comments would reset any per-read timeout)."""
    if not seconds:
        yield
        return

    def ring(signum, frame):
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def tail(
    connection: BrokerConnection,
    queue: str,
    *,
    count: int | None,
    as_json: bool,
    timeout: float | None,
) -> Exit:
    """Print what the queue's stream delivers until ``count`` messages, its end or ``timeout``.

    DONE when ``count`` messages arrived (without ``count``: when at least one did);
    NOTHING when the stream ended or time ran out before that.
    """
    received = 0
    ended = "the stream ended"
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    try:
        with (
            time_limit(timeout),
            connection.stream("GET", connection.path("c", queue), headers=headers) as response,
        ):
            for event in EventSource(response).iter_sse():
                if event.event == "end":  # the queue was purged, or the broker is stopping
                    break
                if event.event != "message" or not event.data:
                    continue
                message = _message(event.data)
                click.echo(message_line(message, as_json=as_json, with_receipt=False))
                received += 1
                if count is not None and received >= count:
                    return Exit.DONE
    except _TimeUp:
        ended = f"{timeout:g} s passed"
    except SSEError as exc:
        raise Failure(
            f"{connection.url} did not answer with an event stream: {exc}", Exit.UNREACHABLE
        ) from None
    if count is None and received:
        return Exit.DONE
    got = "no message" if not received else f"only {received} of {count} messages"
    click.echo(f"Error: {got} arrived before {ended}", err=True)
    return Exit.NOTHING


def _message(data: str) -> dict:
    try:
        message = json.loads(data)
    except ValueError:
        raise Failure(
            f"the stream sent something that is not JSON: {data[:80]!r}", Exit.UNREACHABLE
        ) from None
    if not isinstance(message, dict):
        raise Failure(
            f"the stream sent something that is not a message: {data[:80]!r}", Exit.UNREACHABLE
        )
    return message
