"""``shutdown``: acknowledged messages lost when the broker is stopped under load.

Each trial starts a broker on a fresh embedded Valkey, connects SSE consumers (half
on a broadcast queue, half on a roundrobin one) and producers (one POST per message,
keep-alive), then stops the broker with SIGTERM (a graceful stop) or SIGKILL (a
crash). The broker is then started again on the same data directory and what is
left in the queues is read. A message the broker acknowledged (200) is lost when
no consumer received it and it is not in its queue either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from dataclasses import dataclass, field

from bench.consumers import SseConsumer, close_all, connect_all
from bench.httpclient import HttpConnection, HttpError, encode_request, form_body
from bench.publish import FORM
from bench.report import Check, ScenarioResult, Table
from bench.scenario import Context, Scenario
from bench.servers import BrokerServer, pid_alive

PRODUCERS = 8
LOAD_SECONDS = 2.0
VALUE_SIZE = 1000


class RecordingSseConsumer(SseConsumer):
    """An SSE consumer that keeps the value of every message it gets."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.values: list[str] = []

    def deliver(self, text: str | bytes) -> None:
        message = json.loads(text)
        if isinstance(message, dict):
            self.values.append(message.get("value"))
        super().deliver(text)


@dataclass
class Trial:
    """What one stop did to the messages."""

    acked: set[str] = field(default_factory=set)  # answered 200
    refused: set[str] = field(default_factory=set)  # answered 503: nothing stored
    unknown: set[str] = field(default_factory=set)  # 504, or no answer at all
    received: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)  # still queued after the restart
    stop_seconds: float = 0.0

    @property
    def lost(self) -> set[str]:
        return self.acked - self.received - self.left

    @property
    def refused_but_stored(self) -> set[str]:
        return self.refused & (self.received | self.left)


async def _produce(port: int, tag: str, queues: list[str], trial: Trial, halt: asyncio.Event):
    conn = HttpConnection(port)
    failures = 0
    for i in range(10**9):
        if halt.is_set() or failures >= 3:
            break
        value = f"{tag}-{i}-".ljust(VALUE_SIZE, "x")
        path = f"/q/{queues[i % len(queues)]}"
        raw = encode_request(
            "POST", path, port=port, body=form_body(value=value), content_type=FORM
        )
        try:
            response = await asyncio.wait_for(conn.request(raw, "POST"), 10)
        except ConnectionRefusedError:  # the broker is gone: nothing was sent
            failures += 1
            await asyncio.sleep(0.05)
            continue
        except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpError):
            trial.unknown.add(value)
            failures += 1
            await asyncio.sleep(0.05)
            continue
        failures = 0
        if response.status == 200:
            trial.acked.add(value)
        elif response.status == 503:
            trial.refused.add(value)
        else:
            trial.unknown.add(value)
        await asyncio.sleep(0)
    conn.close()


async def _take_all(port: int, queue: str) -> list[str]:
    conn = await HttpConnection(port).open()
    values: list[str] = []
    try:
        while True:
            response = await conn.request(encode_request("GET", f"/q/{queue}?n=500", port=port))
            batch = json.loads(response.body) if response.status == 200 else []
            if not batch:
                return values
            values += [message["value"] for message in batch]
    finally:
        conn.close()


async def _run_trial(broker: BrokerServer, sig: int, consumers_n: int) -> Trial:
    trial = Trial()
    port, name = broker.port, uuid.uuid4().hex[:8]
    fanout, shared = f"stop-{name}-b", f"stop-{name}-r"
    conn = await HttpConnection(port).open()
    await conn.request(
        encode_request(
            "POST", f"/p/{shared}", port=port, body=form_body(policy="roundrobin"),
            content_type=FORM,
        )
    )  # fmt: skip
    conn.close()
    half = consumers_n // 2
    consumers = [RecordingSseConsumer(port, fanout) for _ in range(half)]
    consumers += [RecordingSseConsumer(port, shared) for _ in range(consumers_n - half)]
    await connect_all(consumers)
    halt = asyncio.Event()
    producers = [
        asyncio.create_task(_produce(port, f"p{n}", [fanout, shared], trial, halt))
        for n in range(PRODUCERS)
    ]
    await asyncio.sleep(LOAD_SECONDS)
    started = time.monotonic()
    broker.proc.send_signal(sig)
    while broker.proc.poll() is None and time.monotonic() - started < 30:
        await asyncio.sleep(0.01)
    trial.stop_seconds = time.monotonic() - started
    # Consumers read what their sockets still hold until the broker's side is closed.
    deadline = time.monotonic() + 10
    while any(not c.ended for c in consumers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    halt.set()
    await asyncio.gather(*producers)
    await close_all(consumers)
    trial.received = {value for c in consumers for value in c.values}
    return trial


def _wait_gone(pid: int | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


class ShutdownScenario(Scenario):
    name = "shutdown"
    title = "shutdown: acknowledged messages lost on SIGTERM and SIGKILL under load"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        return [
            Check(
                "shutdown", f"SIGTERM: 0 acknowledged messages lost ({options.stop_trials} trials)"
            ),
            Check("shutdown", "SIGTERM: no 503 for a stored message"),
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        ctx.out(
            f"  each trial: {opts.stop_consumers} SSE consumers (half broadcast, half "
            f"roundrobin), {PRODUCERS} producers (one POST of {VALUE_SIZE} bytes per message, "
            f"keep-alive) for {LOAD_SECONDS:g} s, then the signal; restart on the same data "
            "dir and count"
        )
        table = Table(
            ["signal", "trial", "acked", "received", "left in queue", "lost", "503", "unknown",
             "stop s"], left=2,
        )  # fmt: skip
        totals: dict[str, list[Trial]] = {"SIGTERM": [], "SIGKILL": []}
        for label, sig in (("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)):
            for number in range(1, opts.stop_trials + 1):
                trial = self._trial(ctx, sig, opts.stop_consumers)
                totals[label].append(trial)
                table.add(
                    label, number, len(trial.acked), len(trial.received & trial.acked),
                    len(trial.left & trial.acked), len(trial.lost), len(trial.refused),
                    len(trial.unknown), f"{trial.stop_seconds:.2f}",
                )  # fmt: skip
        ctx.out()
        ctx.out(table.render())
        for label, trials in totals.items():
            acked = sum(len(t.acked) for t in trials)
            lost = sum(len(t.lost) for t in trials)
            slowest = max(t.stop_seconds for t in trials)
            ctx.out(
                f"  {label}: {acked:,} acknowledged, {lost:,} lost; slowest stop {slowest:.2f} s"
            )
        term = totals["SIGTERM"]
        lost = sum(len(t.lost) for t in term)
        acked = sum(len(t.acked) for t in term)
        hidden = sum(len(t.refused_but_stored) for t in term)
        kill_lost = sum(len(t.lost) for t in totals["SIGKILL"])
        result.checks[0].judge(lost == 0, f"{lost} of {acked:,} lost (SIGKILL: {kill_lost})")
        result.checks[1].judge(hidden == 0, f"{hidden} stored after a 503")

    @staticmethod
    def _trial(ctx: Context, sig: int, consumers: int) -> Trial:
        workdir = ctx.workdir("shutdown")
        broker = BrokerServer(workdir).start()
        valkey = broker.valkey_pid()
        try:
            trial = asyncio.run(_run_trial(broker, sig, consumers))
        finally:
            broker.stop()
        if sig == signal.SIGTERM:
            _wait_gone(
                valkey
            )  # a graceful stop ends its Valkey; after SIGKILL the next broker does
        again = BrokerServer(workdir).start()
        try:
            trial.left = set(asyncio.run(_left_over(again.port)))
        finally:
            again.stop()
        return trial


async def _left_over(port: int) -> list[str]:
    """Every message still queued, in every queue of the broker."""
    conn = await HttpConnection(port).open()
    try:
        response = await conn.request(encode_request("GET", "/stats/", port=port))
    finally:
        conn.close()
    values: list[str] = []
    for queue in json.loads(response.body)["queues"]:
        values += await _take_all(port, queue)
    return values
