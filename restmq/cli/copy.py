"""``restmq copy``: move the pending messages of queues from one broker to another.

Each batch is taken from the source under a lease, added to the target in order, and
acked at the source only once the target stored it. A copy that dies between the add
and the ack leaves the batch leased at the source: the leases run out, the messages
come back, and a rerun copies them again. So nothing is lost, and the only duplicates
are the batch in flight when the copy was interrupted.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click

from restmq.cli.connection import BrokerConnection, json_of
from restmq.cli.failures import Exit, Failure
from restmq.cli.push import batches

ADD_BYTES = 4 << 20  # one add request's values, well under the broker's --max-body (8 MiB)
ACK_URL_BYTES = 16 << 10  # receipts per ack request, well under --max-header-bytes (64 KiB)
# /stats/ keeps the numbers the original stored
_POLICY_NAMES = {1: "broadcast", 2: "roundrobin"}


@dataclass(frozen=True)
class QueueSettings:
    """What ``restmq copy`` copies of a queue besides its messages."""

    policy: str
    started: bool
    max_deliveries: int


@dataclass
class QueueCopied:
    """One queue's outcome: messages moved, and those consumers held under a lease."""

    queue: str
    moved: int
    leased: int


def source_queues(source: BrokerConnection) -> dict[str, dict[str, Any]]:
    """Every queue ``/stats/`` of the source lists, by name, with its figures."""
    answer = json_of(source.call("GET", "/stats/"))
    queues = answer.get("queues") if isinstance(answer, dict) else None
    if not isinstance(queues, dict):
        raise Failure(
            f"{source.url}/stats/ did not list queues: is it a RestMQ broker?", Exit.UNREACHABLE
        )
    return queues


def chosen_queues(listed: dict[str, dict[str, Any]], names: Sequence[str], url: str) -> list[str]:
    """The queues to copy: ``names`` in the order given, or every listed queue, sorted.

    A name the source does not list is refused before anything moves."""
    if not names:
        return sorted(listed)
    unknown = [name for name in names if name not in listed]
    if unknown:
        raise Failure(
            f"no queue {', '.join(unknown)} at {url} (restmq --url {url} stats lists its queues)",
            Exit.USAGE,
        )
    return list(dict.fromkeys(names))


def read_settings(source: BrokerConnection, queue: str, figures: dict[str, Any]) -> QueueSettings:
    """The queue's policy and status (from its ``/stats/`` figures) and max_deliveries."""
    answer = json_of(source.call("GET", source.path("p", queue)))
    policy = answer.get("value") if isinstance(answer, dict) else None
    if policy not in ("broadcast", "roundrobin"):
        policy = _POLICY_NAMES.get(figures.get("policy"), "broadcast")
    return QueueSettings(
        policy=policy,
        started=figures.get("status", 1) != 0,
        max_deliveries=int(answer.get("max_deliveries", 0)) if isinstance(answer, dict) else 0,
    )


def write_settings(target: BrokerConnection, queue: str, settings: QueueSettings) -> None:
    target.call(
        "POST",
        target.path("p", queue),
        data={"policy": settings.policy, "max_deliveries": str(settings.max_deliveries)},
    )
    status = "start" if settings.started else "stop"
    target.call("POST", target.path("control", queue), data={"status": status})


@contextlib.contextmanager
def at(side: str, connection: BrokerConnection) -> Iterator[None]:
    """Name the broker (``source`` or ``target``) in a failure of the calls made to it."""
    try:
        yield
    except Failure as failure:
        named = connection.url in failure.message
        failure.message = f"{side}{'' if named else ' ' + connection.url}: {failure.message}"
        raise


def take_leased(source: BrokerConnection, queue: str, count: int, lease: int) -> list[dict]:
    """Up to ``count`` pending messages, oldest first, each under a lease of ``lease`` s."""
    response = source.call(
        "GET", source.path("q", queue), params={"n": count, "lease": lease}, expect=(200, 204)
    )
    if response.status_code == 204:
        return []
    answer = json_of(response)
    return answer if isinstance(answer, list) else [answer]


def add_in_order(target: BrokerConnection, queue: str, values: list[str]) -> None:
    """Store ``values`` at the end of the target's queue, in order: one atomic request,
    unless they are too large for one body."""
    for part in batches(values, len(values), ADD_BYTES):
        target.post_json(target.path("q", queue), {"values": part})


def ack_at_source(source: BrokerConnection, queue: str, receipts: list[str]) -> int:
    """Ack ``receipts`` (several per request); how many leases had already run out."""
    gone = 0
    for group in _url_sized(receipts):
        response = source.call(
            "DELETE",
            source.path("q", queue),
            params=[("receipt", receipt) for receipt in group],
            expect=(200, 409),
        )
        if response.status_code == 409:  # one receipt, and its lease is gone
            gone += 1
            continue
        answer = json_of(response)
        results = answer if isinstance(answer, list) else [answer]
        gone += sum(1 for result in results if not result.get("acked"))
    return gone


def release_at_source(source: BrokerConnection, queue: str, receipts: list[str]) -> bool:
    """Give a batch back to the head of the source queue at once (best effort): True when
    every lease was released. Newest first, so that the batch keeps its order."""
    try:
        for receipt in reversed(receipts):
            source.call(
                "POST",
                source.path("q", queue),
                params={"receipt": receipt, "lease": 0},
                expect=(200, 409),
            )
    except Failure:
        return False
    return True


def move_queue(
    source: BrokerConnection,
    target: BrokerConnection,
    queue: str,
    *,
    batch_size: int,
    lease: int,
    moved_batch: Callable[[int], None],
) -> int:
    """Move ``queue``'s pending messages until the source has none; how many moved."""
    moved = 0
    while True:
        taken = take_leased(source, queue, batch_size, lease)
        if not taken:
            return moved
        receipts = [m["receipt"] for m in taken if m.get("receipt")]
        values = [m["value"] for m in taken]
        try:
            with at("target", target):
                add_in_order(target, queue, values)
        except Failure as failure:
            back = release_at_source(source, queue, receipts) if receipts else False
            when = "" if back else f" once its leases end ({lease} s)"
            failure.message += (
                f" (copying {queue}: {moved} messages moved before it; the batch being"
                f" copied is back at the source{when})"
            )
            raise
        if len(receipts) < len(taken):
            raise Failure(
                f"{source.url} does not serve leases: {len(taken)} messages of {queue} were "
                "taken for good (they are at the target); restmq copy needs a broker with leases",
                Exit.USAGE,
            )
        try:
            gone = ack_at_source(source, queue, receipts)
        except Failure as failure:
            failure.message += (
                f" (copying {queue}: the last batch is at the target but was not acked at the"
                f" source: a rerun copies those {len(taken)} messages again)"
            )
            raise
        if gone:
            click.echo(
                f"Warning: {gone} leases of {queue} ran out before the ack: those messages are "
                "back at the source and are copied again (use a longer --lease)",
                err=True,
            )
        moved += len(taken)
        moved_batch(len(taken))


@contextlib.contextmanager
def _progress(queue: str, pending: int, shown: bool) -> Iterator[Callable[[int], None]]:
    """A bar on stderr counting the messages moved, when ``shown``; else nothing."""
    if not shown:
        yield lambda count: None
        return
    with click.progressbar(
        length=max(pending, 1),
        label=f"copying {queue}:",
        file=sys.stderr,
        show_pos=True,
        show_eta=False,
    ) as bar:
        yield bar.update


def copy_queues(
    source: BrokerConnection,
    target: BrokerConnection,
    names: Sequence[str],
    *,
    batch_size: int,
    lease: int,
    progress: bool,
    done: list[QueueCopied],
) -> None:
    """Copy each queue's settings, then move its messages; print a line per queue and
    append it to ``done``."""
    if source.url == target.url:
        raise Failure("--from and --to are the same broker", Exit.USAGE)
    listed = source_queues(source)
    queues = chosen_queues(listed, names, source.url)
    with at("target", target):  # it answers (and lets us in) before anything is taken
        source_queues(target)
    for queue in queues:
        queue_settings = read_settings(source, queue, listed[queue])
        with at("target", target):
            write_settings(target, queue, queue_settings)
        pending = int(listed[queue].get("len", 0))
        with _progress(queue, pending, progress) as moved_batch:
            moved = move_queue(
                source, target, queue, batch_size=batch_size, lease=lease, moved_batch=moved_batch
            )
        figures = json_of(source.call("GET", source.path("stats", queue)))
        copied = QueueCopied(queue, moved, int(figures.get("leased", 0)))
        done.append(copied)
        left = f", {copied.leased} leased by consumers left at the source" if copied.leased else ""
        click.echo(f"{queue}: {moved} messages moved{left}")


def summary(done: list[QueueCopied], seconds: float) -> str:
    moved = sum(c.moved for c in done)
    leased = sum(c.leased for c in done)
    left = f"; {leased} leased by consumers were not moved" if leased else ""
    queues = "1 queue" if len(done) == 1 else f"{len(done)} queues"
    return f"copied {queues}, {moved} messages moved in {seconds:.1f} s{left}"


def run_copy(
    source: BrokerConnection,
    target: BrokerConnection,
    names: Sequence[str],
    *,
    batch_size: int,
    lease: int,
    progress: bool,
) -> None:
    """Copy ``names`` (every queue when empty), then print the summary. A failure says
    what the queues finished before it moved."""
    started = time.monotonic()
    done: list[QueueCopied] = []
    try:
        copy_queues(
            source, target, names, batch_size=batch_size, lease=lease, progress=progress, done=done
        )
    except Failure as failure:
        if done:
            failure.message += f"; {summary(done, time.monotonic() - started)} before it"
        raise
    click.echo(summary(done, time.monotonic() - started))


def _url_sized(receipts: list[str]) -> Iterator[list[str]]:
    group: list[str] = []
    used = 0
    for receipt in receipts:
        cost = len(receipt) * 3 + 9  # quoted at worst, plus "&receipt="
        if group and used + cost > ACK_URL_BYTES:
            yield group
            group, used = [], 0
        group.append(receipt)
        used += cost
    if group:
        yield group
