"""``restmq push``: messages from the arguments or standard input, sent in batches."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO

import click

from restmq.cli.failures import Exit, Failure, failure_from
from restmq.client import Client, RestMQError

BATCH_BYTES = 1 << 20  # well under the broker's default --max-body (8 MiB)


def stdin_lines(stream: IO[str]) -> Iterator[str]:
    """One message per line; empty lines are skipped (the broker refuses empty messages)."""
    try:
        for line in stream:
            line = line.rstrip("\r\n")
            if line:
                yield line
    except UnicodeDecodeError as exc:
        raise Failure(f"standard input is not UTF-8 text: {exc.reason}", Exit.USAGE) from None


def batches(values: Iterable[str], size: int, max_bytes: int = BATCH_BYTES) -> Iterator[list[str]]:
    """Consecutive lists of at most ``size`` values and about ``max_bytes`` of JSON each."""
    batch: list[str] = []
    used = 0
    for value in values:
        cost = len(json.dumps(value).encode()) + 2
        if batch and (len(batch) >= size or used + cost > max_bytes):
            yield batch
            batch, used = [], 0
        batch.append(value)
        used += cost
    if batch:
        yield batch


def push(
    client: Client,
    queue: str,
    values: Iterable[str],
    *,
    batch_size: int,
    ttl: int | None,
    delay: int | None,
    print_keys: bool,
    progress: bool,
) -> int:
    """Send ``values`` in order, one atomic batch per request; return how many were stored.

    Each batch carries an Idempotency-Key of its own, and the client tries it again with
    that key when the broker is unavailable or its answer was lost: it is stored once.
    With ``progress`` a bar on stderr counts the messages as they are read.
    """
    sent = 0
    shown = (
        click.progressbar(
            values,
            label=f"pushing to {queue}:",
            file=sys.stderr,
            show_pos=True,
            bar_template="%(label)s %(info)s messages",  # a count: the total is not known
            update_min_steps=50,
        )
        if progress
        else contextlib.nullcontext(values)
    )
    with shown as counted:
        for batch in batches(counted, batch_size):
            try:
                keys = client.push_many(queue, batch, ttl=ttl, delay=delay)
            except RestMQError as error:
                failure = failure_from(error, client.url)
                if sent:  # say what is already stored, so that a retry can skip it
                    failure.message += f" ({sent} messages before it were stored)"
                raise failure from None
            sent += len(batch)
            if print_keys:
                click.echo("\n".join(keys))
    return sent
