"""``python -m bench.soak``: a long mixed load on one broker, watched minute by minute.

It starts a real ``twistd restmq`` broker on a fresh embedded Valkey, drives it with
every kind of producer and consumer at a moderate rate (``bench.soak_load``), prints
per interval the messages in and out, the queue depth, the broker's RSS and open file
descriptors and Valkey's ``used_memory``, then stops the load, drains the queues and
judges (``bench.soak_verdicts``): (a) no message answered 200 was lost; (b) no figure
kept growing after the first two intervals (the warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.cli import positive
from bench.redisinfo import RespConnection
from bench.servers import BrokerServer, rss_bytes, stop_all
from bench.soak_load import (
    Ledger,
    SoakLeasedWs,
    SoakSse,
    SoakWs,
    Target,
    churning_streams,
    leased_consumer,
    message_id,
    popper,
    producer,
)
from bench.soak_verdicts import (
    GROWTH_LIMIT,
    ROW_FORMAT,
    WARMUP_ROWS,
    Row,
    SoakRun,
    row_line,
    verdicts,
)
from bench.streaming import _call, wait_registered

WS_LEASE = 30  # seconds; a leased WebSocket that closes gives its messages back at once
BATCH = 10
# share of the rate per queue: plain and long-poll pops, leased takes, streams,
# leased WebSocket streams
SHARES = {"pop": 0.35, "lease": 0.25, "stream": 0.20, "wslease": 0.20}

DESCRIPTION = f"""\
RestMQ soak: a `twistd restmq` broker on a fresh embedded Valkey under a mixed load
for --minutes (10), one table row per --interval (60 s), then a verdict.

load, over four queues (--rate msg/s in all, each queue's share sent 1/3 as single
`value=` POSTs and 2/3 as JSON batches of {BATCH} `{{"values": [...]}}`):
  pop      {SHARES["pop"]:.0%}: 2 plain consumers (GET /q/<q>), 2 long polls (GET /q/<q>?wait=5,
           one with n=10)
  lease    {SHARES["lease"]:.0%}: 3 leased consumers (GET /q/<q>?lease=S&wait=2, S from --lease,
           n=1 or 5; ack DELETE /q/<q>?receipt=R) that die now and then holding what
           they took (no ack, a new connection): those come back when the lease ends
  stream   {SHARES["stream"]:.0%}: roundrobin, 2 SSE consumers (GET /c/<q>, Accept:
           text/event-stream) and 1 WebSocket (/ws/<q>), connected throughout
  wslease  {SHARES["wslease"]:.0%}: roundrobin, 2 leased WebSockets
           (/ws/<q>?lease={WS_LEASE}&prefetch=10, ack frames), one of them closed and
           opened again every --churn seconds

per row: messages answered 200 (in) and consumed (out), queue depth (pending +
leased), broker RSS, its open file descriptors (/proc/<pid>/fd, lowest and highest
of the row's 1-second samples) and Valkey used_memory.

verdicts, each PASS or FAIL:
  lost     after the load stops, the consumers finish and the queues are drained:
           every id answered 200 was consumed or drained (duplicates and leased
           redeliveries are allowed, at least once, and reported)
  growth   the last row against the end of row {WARMUP_ROWS} (the warm-up): broker RSS and
           the lowest fd count within {GROWTH_LIMIT:.0%}; Valkey used_memory once drained
           (depth 0) within {GROWTH_LIMIT:.0%} of row {WARMUP_ROWS}'s (whose depth is printed)
It is a report: exit status 0 once it ran, FAIL or not; 1 when it could not run,
130 on Ctrl-C.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--minutes", type=positive(float), default=10.0, metavar="M",
        help="how long the load runs (default 10)")  # fmt: skip
    add("--interval", type=positive(float), default=60.0, metavar="S",
        help="seconds per table row (default 60)")  # fmt: skip
    add("--rate", type=positive(float), default=300.0, metavar="MSG/S",
        help="messages per second over all producers (default 300)")  # fmt: skip
    add("--lease", type=positive(int), default=5, metavar="S",
        help="lease of the leased HTTP consumers, seconds (default 5)")  # fmt: skip
    add("--churn", type=positive(float), default=10.0, metavar="S",
        help="seconds between two reconnections of a leased WebSocket (default 10)")  # fmt: skip
    add("--value-size", type=positive(int), default=100, metavar="BYTES",
        help="size of each message value (default 100)")  # fmt: skip
    add("--keep-workdir", action="store_true",
        help="keep the temporary work dir (broker log, data dir)")  # fmt: skip
    return p


# -- what is watched ----------------------------------------------------------


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def used_memory(socket_path: Path) -> int | None:
    try:
        with RespConnection(socket_path) as conn:
            text = conn.command("INFO", "memory")
    except (OSError, RuntimeError):
        return None
    for line in text.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    return None


async def depth(port: int, queues: list[str]) -> int | None:
    """Pending + leased messages of ``queues``, from ``GET /stats/``."""
    response = await _call(port, "GET", "/stats/")
    if response.status != 200:
        return None
    known = json.loads(response.body).get("queues", {})
    return sum(known[q].get("len", 0) + known[q].get("leased", 0) for q in queues if q in known)


# -- the run ------------------------------------------------------------------


class Soak:
    """One soak on a running broker: the load, the rows, the settle and the drain."""

    def __init__(self, broker: BrokerServer, opts: argparse.Namespace) -> None:
        self.broker = broker
        self.opts = opts
        self.port = broker.port
        suffix = os.urandom(3).hex()
        self.targets = {name: Target(self.port, f"soak-{name}-{suffix}") for name in SHARES}
        self.run = SoakRun(Ledger(), queues=[t.queue for t in self.targets.values()])
        self.stop_producers = asyncio.Event()
        self.stop_consumers = asyncio.Event()

    async def __call__(self) -> SoakRun:
        opts, ledger, t = self.opts, self.run.ledger, self.targets
        for name in ("stream", "wslease"):
            await _call(self.port, "POST", f"/p/{t[name].queue}", b"policy=roundrobin",
                        "application/x-www-form-urlencoded")  # fmt: skip
        streams = [SoakSse(t["stream"], ledger), SoakSse(t["stream"], ledger)]
        streams.append(SoakWs(t["stream"], ledger))
        for stream in streams:
            await stream.connect()
            stream.start()
        churned: list = []
        stop = self.stop_consumers
        consumers = [
            popper(t["pop"], "", ledger, stop),
            popper(t["pop"], "", ledger, stop),
            popper(t["pop"], "wait=5", ledger, stop),
            popper(t["pop"], "n=10&wait=5", ledger, stop),
            *(leased_consumer(t["lease"], opts.lease, (20, 80), seed, ledger, stop)
              for seed in range(3)),
            churning_streams(lambda: SoakLeasedWs(t["wslease"], ledger, WS_LEASE), 2,
                             opts.churn, ledger, stop, churned),
        ]  # fmt: skip
        consumer_tasks = [asyncio.create_task(c) for c in consumers]
        await wait_registered(self.port, [t["stream"].queue, t["wslease"].queue], 5)
        producer_tasks = []
        for name, share in SHARES.items():
            rate = opts.rate * share
            for kind, batch, part in (("s", 1, 1 / 3), ("b", BATCH, 2 / 3)):
                run = producer(t[name], f"{name}{kind}", rate * part, batch, opts.value_size,
                               ledger, self.stop_producers)  # fmt: skip
                producer_tasks.append(asyncio.create_task(run))
        try:
            await self._watch(opts.minutes * 60, opts.interval)
        finally:
            self.stop_producers.set()
            await asyncio.gather(*producer_tasks, return_exceptions=True)
        self.run.settled = await self._settle(timeout=max(opts.lease, WS_LEASE) + 30)
        stop.set()
        await asyncio.wait(consumer_tasks, timeout=60)
        for task in consumer_tasks + producer_tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is not None:
                ledger.errors[f"a load task failed: {task.exception()!r}"[:160]] += 1
        self.run.streams_ended = sum(s.ended for s in streams + churned)
        for stream in streams + churned:
            await stream.close()
        await self._drain(timeout=WS_LEASE + 10)
        self.run.drained = await self._sample(0, 0, 0.0, [])
        return self.run

    async def _sample(self, messages_in: int, messages_out: int, seconds: float, fds: list) -> Row:
        pid = self.broker.pid
        fds = [*fds, open_fds(pid)]
        fds = [n for n in fds if n is not None]
        return Row(
            seconds=seconds,
            messages_in=messages_in,
            messages_out=messages_out,
            depth=await depth(self.port, self.run.queues),
            rss=rss_bytes(pid),
            fds_low=min(fds, default=None),
            fds_high=max(fds, default=None),
            used_memory=await asyncio.to_thread(used_memory, self.broker.valkey_socket),
        )

    async def _watch(self, duration: float, interval: float) -> None:
        ledger = self.run.ledger
        print(ROW_FORMAT.format("time", "in", "out", "depth", "broker RSS", "fds", "valkey mem"))
        print(ROW_FORMAT.format(*["-" * n for n in (6, 8, 8, 6, 10, 9, 12)]), flush=True)
        t0 = time.monotonic()
        counted = (ledger.messages_in, ledger.messages_out)
        for index in range(math.ceil(duration / interval - 1e-9)):
            end = t0 + min(duration, (index + 1) * interval)
            fds: list[int | None] = []
            while (left := end - time.monotonic()) > 0:
                fds.append(open_fds(self.broker.pid))
                await asyncio.sleep(min(1.0, left))
            # the counts are read at the row's end, before the (slower) samples
            start, counted = counted, (ledger.messages_in, ledger.messages_out)
            row = await self._sample(counted[0] - start[0], counted[1] - start[1], end - t0, fds)
            self.run.rows.append(row)
            print(row_line(row), flush=True)

    def _missing(self) -> set[str]:
        ledger = self.run.ledger
        return ledger.acknowledged - ledger.consumed.keys()

    async def _settle(self, timeout: float) -> bool:
        """Let the consumers take what is left, until every acknowledged id was consumed."""
        deadline = time.monotonic() + timeout
        while self._missing():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)
        return True

    async def _drain(self, timeout: float) -> None:
        """Pop whatever the queues still hold once no message is leased any more."""
        deadline = time.monotonic() + timeout
        for queue in self.run.queues:
            while time.monotonic() < deadline:
                stats = json.loads((await _call(self.port, "GET", f"/stats/{queue}")).body)
                if not stats.get("leased"):
                    break
                await asyncio.sleep(0.5)
            while True:
                response = await _call(self.port, "GET", f"/q/{queue}?n=1000")
                messages = json.loads(response.body) if response.status == 200 else []
                if not messages:
                    break
                for message in messages:
                    if (ident := message_id(message.get("value"))) is not None:
                        self.run.ledger.left[ident] += 1


# -- the command --------------------------------------------------------------


def _terminate(signum, frame) -> None:
    signal.raise_signal(signal.SIGINT)  # SIGTERM stops the run as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="rmqsoak-"))
    kept = "kept" if opts.keep_workdir else "removed at the end"
    print(
        f"RestMQ soak: {opts.minutes:g} min, {opts.rate:g} msg/s, rows of {opts.interval:g} s; "
        f"work dir {root} ({kept})",
        flush=True,
    )
    started = time.monotonic()
    try:
        broker = BrokerServer(root / "broker").start()
        print(
            f"  broker: twistd restmq (pid {broker.pid}, port {broker.port}) + embedded "
            f"valkey-server (pid {broker.valkey_pid()})",
            flush=True,
        )
        run = asyncio.run(Soak(broker, opts)())
        broker.stop()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the broker", flush=True)
        return 130
    except Exception:
        print("  ERROR: the soak could not run:", flush=True)
        print("  " + traceback.format_exc().replace("\n", "\n  ").rstrip(), flush=True)
        return 1
    finally:
        stop_all()
        if not opts.keep_workdir:
            shutil.rmtree(root, ignore_errors=True)
    text, _ok = verdicts(run, opts)
    print(text)
    print(f"  total time {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
