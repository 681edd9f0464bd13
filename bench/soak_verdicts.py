"""The soak's figures and its verdicts: the rows it printed, what the ledger says about
every message id, and whether any figure kept growing after the warm-up."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from bench.report import Table, heading, mib
from bench.soak_load import Ledger

GROWTH_LIMIT = 0.10  # a figure may end at most 10% above its value after the warm-up
WARMUP_ROWS = 2  # growth is judged from the end of the second interval
PASS, FAIL = "PASS", "FAIL"


@dataclass
class Row:
    """The figures of one interval (``seconds``: its end, from the start of the load)."""

    seconds: float
    messages_in: int
    messages_out: int
    depth: int | None
    rss: int | None
    fds_low: int | None
    fds_high: int | None
    used_memory: int | None


@dataclass
class SoakRun:
    ledger: Ledger
    rows: list[Row] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    settled: bool = False  # every acknowledged message was consumed before the drain
    drained: Row | None = None  # the figures once the queues were drained
    streams_ended: int = 0  # streams the broker ended during the run


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


ROW_FORMAT = "  {:>6}  {:>8}  {:>8}  {:>6}  {:>10}  {:>9}  {:>12}"


def row_line(row: Row) -> str:
    fds = "-" if row.fds_low is None else f"{row.fds_low}-{row.fds_high}"
    return ROW_FORMAT.format(
        _clock(row.seconds), f"{row.messages_in:,}", f"{row.messages_out:,}",
        "-" if row.depth is None else f"{row.depth:,}", mib(row.rss), fds, mib(row.used_memory),
    )  # fmt: skip


def _growth(label: str, base: int | None, last: int | None, show) -> tuple[list[str], bool]:
    if base is None or last is None or base <= 0:
        return [label, show(base), show(last), "-", FAIL], False
    change = (last - base) / base
    ok = change <= GROWTH_LIMIT
    return [label, show(base), show(last), f"{change:+.1%}", PASS if ok else FAIL], ok


def verdicts(run: SoakRun, opts: argparse.Namespace) -> tuple[str, bool]:
    ledger = run.ledger
    seen = ledger.consumed + ledger.left
    lost = ledger.acknowledged - seen.keys()
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    redelivered = sum(n - 1 for n in ledger.leased_deliveries.values() if n > 1)
    strangers = len(seen.keys() - ledger.acknowledged)
    lines = [
        heading("verdicts"),
        f"  messages answered 200: {len(ledger.acknowledged):,}; consumed: "
        f"{sum(ledger.consumed.values()):,}; left in the queues and drained: "
        f"{sum(ledger.left.values()):,}",
        f"  lost: {len(lost):,}; duplicates: {duplicates:,}; leased redeliveries: "
        f"{redelivered:,} ({ledger.consumer_deaths:,} leased consumers died holding "
        f"{ledger.abandoned:,} messages; {ledger.stream_reconnects:,} leased WebSocket "
        f"reconnections; {ledger.ack_refused:,} acks refused)",
        "  consumed by: "
        + ", ".join(f"{kind} {n:,}" for kind, n in sorted(ledger.by_consumer.items())),
        f"  POSTs without a 200: {ledger.unanswered:,} messages (not counted; "
        f"{strangers:,} of them were consumed anyway)",
    ]
    if not run.settled:
        lines.append("  note: the consumers had not taken every message when the settle "
                     "time ran out; the drain counted the rest")  # fmt: skip
    if run.streams_ended:
        lines.append(f"  note: {run.streams_ended} stream(s) ended before the close")
    for text, count in (ledger.statuses + ledger.errors).most_common(5):
        lines.append(f"  note: {count:,} x {text}")
    if lost:
        lines.append(f"  lost ids (first 10): {', '.join(sorted(lost)[:10])}")
    table = Table(["verdict", f"at {_clock(WARMUP_ROWS * opts.interval)}", "at the end",
                   "change", "result"])  # fmt: skip
    table.add("no acknowledged message lost", "-", f"{len(lost):,} lost", "-",
              PASS if not lost else FAIL)  # fmt: skip
    ok = not lost
    if len(run.rows) <= WARMUP_ROWS:
        lines.append(
            f"  growth not judged: {len(run.rows)} row(s), it needs more than {WARMUP_ROWS} "
            "(the first ones are the warm-up)"
        )
    else:
        base, last = run.rows[WARMUP_ROWS - 1], run.rows[-1]
        drained = run.drained
        judged = [
            _growth("broker RSS", base.rss, last.rss, mib),
            _growth("broker open fds (lowest of a row)", base.fds_low, last.fds_low, str),
            _growth(
                "valkey used_memory, drained (depth 0)",
                base.used_memory,
                drained.used_memory if drained else None,
                mib,
            ),
        ]
        for cells, good in judged:
            table.add(*cells)
            ok &= good
        lines.append(
            f"  valkey used_memory: {mib(base.used_memory)} at {_clock(base.seconds)} (depth "
            f"{base.depth}), {mib(last.used_memory)} in the last row (depth {last.depth}), "
            f"{mib(drained.used_memory if drained else None)} drained (depth "
            f"{drained.depth if drained else '-'})"
        )
    lines += ["", table.render(), "", f"  soak: {PASS if ok else FAIL}"]
    return "\n".join(lines), ok
