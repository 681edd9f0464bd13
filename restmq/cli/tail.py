"""``restmq tail``: a Server-Sent Events consumer of ``GET /c/<queue>``."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import click

from restmq.cli.failures import Exit
from restmq.cli.output import message_line
from restmq.client import Client


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
    client: Client,
    queue: str,
    *,
    count: int | None,
    as_json: bool,
    timeout: float | None,
) -> Exit:
    """Print what the queue's stream delivers until ``count`` messages, its end or ``timeout``.

    DONE when ``count`` messages arrived (without ``count``: when at least one did);
    NOTHING when the stream ended (the queue was purged, or the broker is stopping) or
    time ran out before that.
    """
    received = 0
    ended = "the stream ended"
    try:
        with time_limit(timeout), client.stream(queue) as messages:
            for message in messages:
                click.echo(message_line(message.answer, as_json=as_json, with_receipt=False))
                received += 1
                if count is not None and received >= count:
                    return Exit.DONE
    except _TimeUp:
        ended = f"{timeout:g} s passed"
    if count is None and received:
        return Exit.DONE
    got = "no message" if not received else f"only {received} of {count} messages"
    click.echo(f"Error: {got} arrived before {ended}", err=True)
    return Exit.NOTHING
