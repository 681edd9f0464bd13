"""The messaging semantics' cost, against one broker on the embedded Valkey, next to plain
adds measured in the same run:

- add with an ``Idempotency-Key`` header (a fresh key on every request) vs plain add;
- delayed add (``delay=60``: nothing becomes due during the run) vs plain add;
- add to a queue with 3 durable subscriptions: messages stored per second (3 per add)
  vs plain add's;
- delay precision: messages added with delays over a few seconds, their due time in
  their value, one SSE consumer; delivery time minus due time.

The four kinds of add run in interleaved rounds, so that a slow spell of a shared
machine falls on every kind alike; each kind's runs are then taken together. While the
broker does not delay messages yet (a ``delay=60`` add can be popped at once, or is
refused), the delayed runs and the precision phase are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field

from bench.consumers import Recorder, SseConsumer
from bench.httpclient import HttpConnection, encode_request, form_body
from bench.loadgen import LoadResult, LoadSpec, percentile
from bench.report import Check, ScenarioResult, Table, ms, noise_warning, per_second
from bench.rest import FORM, produce_spec
from bench.scenario import Context, Scenario, cpu_count
from bench.servers import BrokerServer

IDEMPOTENT_TARGET = 0.85  # idempotent add req/s against plain add req/s
DELAYED_TARGET = 0.85  # delayed add req/s against plain add req/s
PRECISION_P99_S = 1.5  # delivery - due time; the design sweeps due messages about once a second
DELAY = 60  # seconds: no message of the delayed runs becomes due during the scenario
SUBSCRIPTIONS = ("billing", "audit", "archive")
DUE_DELAYS = (2, 3, 4)  # seconds, in turn; sent over SEND_SPREAD s: due over 2-5 s
SEND_SPREAD = 1.0
DELIVERY_GRACE = 10.0  # seconds after the last due time to wait for the last deliveries


@dataclass
class Kind:
    """One kind of add: its load, the queues it fills, and its runs (one per round)."""

    label: str
    mode: str
    spec: LoadSpec
    stored_per_add: int = 1
    runs: list[tuple[LoadResult, dict]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        window = sum(load.window_s for load, _ in self.runs)
        return sum(load.completed for load, _ in self.runs) / window if window else 0.0

    @property
    def answered_ok(self) -> int:
        """Adds answered 2xx over every run, warm-ups included: what should be stored."""
        return sum(load.count(lambda s: 200 <= s < 300, everything=True) for load, _ in self.runs)

    def cpu(self, name: str) -> float | None:
        """CPU % of ``name`` over every run, weighted by the runs' windows."""
        pairs = [(cpu.get(name), load.window_s) for load, cpu in self.runs]
        pairs = [(value, window) for value, window in pairs if value is not None]
        total = sum(window for _, window in pairs)
        return sum(value * window for value, window in pairs) / total if total else None


@dataclass
class Precision:
    sent: int
    accepted: int  # answered 200
    lateness_ns: list[int]  # delivery - due time of each delivered message, sorted
    failure: str | None = None

    @property
    def delivered(self) -> int:
        return len(self.lateness_ns)


class SemanticsScenario(Scenario):
    name = "semantics"
    title = "semantics: idempotent, delayed and fanned-out adds vs plain add; delay precision"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        return [
            Check("semantics", f"add with Idempotency-Key >= {IDEMPOTENT_TARGET}x plain add req/s"),
            Check("semantics", f"delayed add (delay={DELAY}) >= {DELAYED_TARGET}x plain add req/s"),
            Check(
                "semantics",
                f"delay precision: p99 of delivery - due time <= {PRECISION_P99_S:g} s",
            ),
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        broker = BrokerServer(ctx.workdir("broker")).start()
        servers = {"broker": broker.pid, "valkey": broker.valkey_pid()}
        window = opts.duration / opts.semantics_rounds
        ctx.out(
            f"  machine: {cpu_count()} cores shared; server: 1 twistd process (pid "
            f"{broker.pid}) + 1 embedded valkey-server (pid {servers['valkey']}); client: "
            f"{opts.client_procs} load-generator process(es), {opts.connections} keep-alive "
            f"connections in a closed loop; value {opts.value_size} bytes; "
            f"{opts.semantics_rounds} rounds of a run of each kind (warm-up {opts.warmup:g} s, "
            f"measured {window:.3g} s each), each kind's runs taken together"
        )
        try:
            refused = asyncio.run(_delay_refused(broker.port))
            kinds = _kinds(opts, broker.port, window, delayed=refused is None)
            asyncio.run(_subscribe(broker.port, kinds[-1].spec.path.removeprefix("/q/")))
            self._rounds(ctx, kinds, servers)
            stored = asyncio.run(_stored(broker.port, kinds))
            precision = None
            if refused is None:
                precision = asyncio.run(_delay_precision(broker.port, opts))
        finally:
            broker.stop()
        self._report(ctx, result, kinds, stored, precision, refused)

    @staticmethod
    def _rounds(ctx: Context, kinds: list[Kind], servers: dict) -> None:
        for number in range(1, ctx.options.semantics_rounds + 1):
            for kind in kinds:
                load, cpu = ctx.measure(kind.spec, servers)
                kind.runs.append((load, cpu))
                warning = noise_warning(f"{kind.label} (round {number})", cpu.get("others"))
                if warning:
                    ctx.out(warning)
        for kind in kinds:
            rounds = " / ".join(per_second(load.rate) for load, _ in kind.runs)
            ctx.out(f"  {kind.label}: req/s by round {rounds}")

    @staticmethod
    def _report(
        ctx: Context,
        result: ScenarioResult,
        kinds: list[Kind],
        stored: list[str],
        precision: Precision | None,
        refused: str | None,
    ) -> None:
        table = Table(
            ["run", "req/s", "x plain", "stored msg/s", "x plain", "p50 ms", "p99 ms",
             "non-2xx", "errors", "broker CPU%", "valkey CPU%", "client CPU%", "others CPU%"]
        )  # fmt: skip
        plain = kinds[0]
        for kind in kinds:
            loads = [load for load, _ in kind.runs]
            latencies = sorted(ns for load in loads for ns in load.latencies_ns)
            window = sum(load.window_s for load in loads)
            client = sum(load.client_cpu_s for load in loads)
            table.add(
                kind.label,
                per_second(kind.rate),
                _times(kind.rate, plain.rate),
                per_second(kind.rate * kind.stored_per_add),
                _times(kind.rate * kind.stored_per_add, plain.rate),
                ms(percentile(latencies, 0.50)),
                ms(percentile(latencies, 0.99)),
                sum(load.count(lambda s: not 200 <= s < 300) for load in loads),
                sum(load.errors for load in loads),
                _pct(kind.cpu("broker")),
                _pct(kind.cpu("valkey")),
                _pct(100 * client / window if window else None),
                _pct(kind.cpu("others")),
            )
        ctx.out()
        ctx.out(table.render())
        ctx.out(
            f"  CPU% is of one core ({cpu_count()} cores = {100 * cpu_count()}%); 'others' is "
            "every other process on the machine during the windows"
        )
        for kind in kinds:
            for load, _ in kind.runs:
                for sample in load.error_samples[:1]:
                    ctx.out(f"  error in '{kind.label}': {sample}")
        for line in stored:
            ctx.out(line)

        by_mode = {kind.mode: kind for kind in kinds}
        idempotent = _ratio(by_mode["idempotent"].rate, plain.rate)
        fanout = by_mode["fanout"]
        fanned = _ratio(fanout.rate * fanout.stored_per_add, plain.rate)
        ctx.out()
        line = f"  ratio to plain add, req/s:  Idempotency-Key {idempotent:.2f}x"
        if "delayed" in by_mode:
            line += f"   delay={DELAY} {_ratio(by_mode['delayed'].rate, plain.rate):.2f}x"
        ctx.out(line + f"   (target >= {IDEMPOTENT_TARGET}x each)")
        ctx.out(
            f"  fan-out to {len(SUBSCRIPTIONS)} subscriptions, messages stored/s over plain "
            f"add's: {fanned:.2f}x   (adds/s {_ratio(fanout.rate, plain.rate):.2f}x; no target)"
        )

        checks = result.checks
        checks[0].judge(idempotent >= IDEMPOTENT_TARGET, f"{idempotent:.2f}x")
        if "delayed" in by_mode:
            delayed = _ratio(by_mode["delayed"].rate, plain.rate)
            checks[1].judge(delayed >= DELAYED_TARGET, f"{delayed:.2f}x")
        for check, mode in ((checks[0], "idempotent"), (checks[1], "delayed")):
            failed = [by_mode[m] for m in ("plain", mode) if m in by_mode]
            failures = sum(_failures(load) for kind in failed for load, _ in kind.runs)
            if failures:
                check.note = f"{failures} adds failed or were not answered 2xx"
        if refused is not None:
            for check in checks[1:]:
                check.note = f"the broker does not delay messages yet ({refused})"
            ctx.out(f"  delayed adds and delay precision skipped: {refused}")
            return
        _report_precision(ctx, checks[2], precision)


def _report_precision(ctx: Context, check: Check, precision: Precision) -> None:
    late = precision.lateness_ns  # sorted
    table = Table(["delivery - due time", "sent", "delivered", "p50 s", "p99 s", "max s",
                   "min s", "early"])  # fmt: skip
    table.add(
        "SSE GET /c/<q>",
        precision.sent,
        precision.delivered,
        _seconds(percentile(late, 0.50) if late else None),
        _seconds(percentile(late, 0.99) if late else None),
        _seconds(late[-1] if late else None),
        _seconds(late[0] if late else None),
        sum(ns < 0 for ns in late),
    )
    ctx.out()
    ctx.out(table.render())
    ctx.out(
        f"  delays {', '.join(map(str, DUE_DELAYS))} s in turn, adds paced over "
        f"{SEND_SPREAD:g} s: due times spread over about {DUE_DELAYS[0]}-"
        f"{DUE_DELAYS[-1] + SEND_SPREAD:g} s; a due time is the add's send time + its delay "
        "(this machine's clock, as Valkey's TIME); 'early': delivered before it"
    )
    if precision.failure:
        ctx.out(f"  the SSE consumer failed: {precision.failure}")
    missing = precision.accepted - precision.delivered
    # an undelivered message counts as infinitely late: p99 over every accepted add
    ranked = late + [float("inf")] * max(0, missing)
    p99 = percentile(ranked, 0.99) / 1e9 if ranked else float("inf")
    measured = f"p99 {p99:.2f} s, max {late[-1] / 1e9:.2f} s" if late else "nothing delivered"
    check.judge(p99 <= PRECISION_P99_S and precision.accepted > 0, measured)
    if missing or precision.accepted < precision.sent:
        check.note = (
            f"{precision.sent - precision.accepted} adds refused, {missing} accepted messages "
            f"not delivered within {DELIVERY_GRACE:g} s of the last due time"
        )


def _kinds(opts: argparse.Namespace, port: int, window: float, delayed: bool) -> list[Kind]:
    """Plain first (the baseline), fan-out last; each kind on a queue of its own."""

    def queue(mode: str) -> str:
        return f"sem-{mode}-{uuid.uuid4().hex[:8]}"

    base = dataclasses.replace(produce_spec(opts, queue("plain")), port=port, duration=window)
    value = "v" * opts.value_size
    kinds = [
        Kind("plain add          POST /q/<q>", "plain", base),
        Kind(
            "Idempotency-Key    POST + a fresh key",
            "idempotent",
            dataclasses.replace(
                base, path=f"/q/{queue('idempotent')}", unique_header="Idempotency-Key"
            ),
        ),
    ]
    if delayed:
        body = form_body(value=value, delay=str(DELAY))
        kinds.append(
            Kind(
                f"delayed add        POST delay={DELAY}",
                "delayed",
                dataclasses.replace(base, path=f"/q/{queue('delayed')}", body=body),
            )
        )
    kinds.append(
        Kind(
            f"fan-out to {len(SUBSCRIPTIONS)} subs  POST /q/<q>",
            "fanout",
            dataclasses.replace(base, path=f"/q/{queue('fanout')}"),
            stored_per_add=len(SUBSCRIPTIONS),
        )
    )
    return kinds


# -- talking to the broker ------------------------------------------------------


async def _call(port: int, method: str, path: str, body: bytes = b"", headers=None):
    conn = await HttpConnection(port).open()
    try:
        raw = encode_request(
            method, path, port=port, body=body,
            content_type=FORM if body else None, headers=headers,
        )  # fmt: skip
        return await conn.request(raw, method)
    finally:
        conn.close()


async def _delay_refused(port: int) -> str | None:
    """None when the broker delays messages; else what it did with a ``delay=60`` add."""
    probe = f"/q/sem-probe-{uuid.uuid4().hex[:8]}"
    added = await _call(port, "POST", probe, form_body(value="probe", delay=str(DELAY)))
    if added.status != 200:
        return f"POST with delay={DELAY} answered {added.status}: {added.body[:120]!r}"
    popped = await _call(port, "GET", probe)
    if popped.status != 204:
        return f"a message added with delay={DELAY} was popped at once ({popped.status})"
    return None


async def _subscribe(port: int, queue: str) -> None:
    for name in SUBSCRIPTIONS:
        answer = await _call(port, "PUT", f"/q/{queue}/subscriptions/{name}")
        if answer.status not in (200, 201):
            raise RuntimeError(
                f"PUT /q/{queue}/subscriptions/{name} answered {answer.status}: "
                f"{answer.body[:200]!r}"
            )


async def _stats(port: int, queue: str) -> dict:
    answer = await _call(port, "GET", f"/stats/{queue}")
    if answer.status != 200:
        raise RuntimeError(f"GET /stats/{queue} answered {answer.status}")
    return json.loads(answer.body)


async def _stored(port: int, kinds: list[Kind]) -> list[str]:
    """What each kind's queues hold after the runs, against the adds answered 2xx."""
    lines = ["  stored (adds answered 2xx, warm-ups included -> what the queues hold):"]
    for kind in kinds:
        queue = kind.spec.path.removeprefix("/q/")
        stats = await _stats(port, queue)
        held = f"{queue}: {stats.get('len')} waiting"
        if kind.mode == "delayed":
            held += f", {stats.get('delayed', '?')} delayed"
        if kind.mode == "fanout":
            copies = [await _stats(port, f"{queue}:{name}") for name in SUBSCRIPTIONS]
            held += "; " + ", ".join(
                f"{queue}:{name}: {stats.get('len')}"
                for name, stats in zip(SUBSCRIPTIONS, copies, strict=True)
            )
        lines.append(f"    {kind.mode:<10} {kind.answered_ok:>9,} -> {held}")
    return lines


async def _delay_precision(port: int, opts: argparse.Namespace) -> Precision:
    """``--delay-samples`` adds with delays in turn from DUE_DELAYS, paced over SEND_SPREAD
    s, each value starting with its due time (ns); one SSE consumer takes them as they
    become due. The Recorder's 'latency' is then delivery time - due time."""
    queue = f"sem-due-{uuid.uuid4().hex[:8]}"
    recorder = Recorder()
    sse = SseConsumer(port, queue, recorder)
    await sse.connect()
    sse.start()
    recorder.recording = True
    conn = await HttpConnection(port).open()
    samples, accepted, last_due = opts.delay_samples, 0, time.time()
    try:
        started = time.monotonic()
        for i in range(samples):
            pause = started + i * SEND_SPREAD / samples - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            delay = DUE_DELAYS[i % len(DUE_DELAYS)]
            due_ns = time.time_ns() + delay * 1_000_000_000
            head = f"{due_ns}:{i}:"
            value = head + "x" * max(0, opts.value_size - len(head))
            raw = encode_request(
                "POST", f"/q/{queue}", port=port,
                body=form_body(value=value, delay=str(delay)), content_type=FORM,
            )  # fmt: skip
            if (await conn.request(raw, "POST")).status == 200:
                accepted += 1
                last_due = max(last_due, due_ns / 1e9)
        deadline = last_due + DELIVERY_GRACE
        while sse.received < accepted and time.time() < deadline and not sse.ended:
            await asyncio.sleep(0.05)
    finally:
        recorder.recording = False
        conn.close()
        await sse.close()
    failure = f"{type(sse.failure).__name__}: {sse.failure}" if sse.failure else None
    return Precision(samples, accepted, sorted(recorder.latencies_ns), failure)


# -- small helpers ---------------------------------------------------------------------


def _failures(load: LoadResult) -> int:
    return load.errors + load.count(lambda s: not 200 <= s < 300, everything=True)


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0


def _times(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _seconds(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e9:.3f}"
