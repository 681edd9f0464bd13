"""At-least-once consumption against a real broker, next to plain pops in the same run.

- consumed messages/s with ``--lease-consumers`` concurrent consumers: plain pops
  (``GET /q/<q>``), leased takes each acked (``GET ?lease=30`` + ``DELETE ?receipt=``),
  and batches of 10 acked in one request (``GET ?n=10&lease=30`` + one ``DELETE``
  with 10 receipts); the kinds run in interleaved rounds, each run counted in
  half-second slices, and the targets are judged on each kind's steady rate (the
  90th percentile of its slices): on a shared machine other work comes in short
  spells that only ever slow a slice down;
- long-poll wake-up latency (``POST`` sent -> the waiting ``GET ?wait=`` answered)
  next to the SSE publish -> delivery latency, one message at a time, same broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

from bench.consumers import Recorder, SseConsumer, stamped_value
from bench.httpclient import HttpConnection, encode_request, form_body, read_response
from bench.loadgen import percentile
from bench.report import Check, ScenarioResult, Table, ms, per_second
from bench.rest import FORM, _prefill
from bench.scenario import Context, Scenario, cpu_count
from bench.servers import BrokerServer

LEASED_TARGET = 0.45  # leased take + ack, against plain pops
BATCH_TARGET = 2.0  # batches of 10 with one ack, against plain pops
LONG_POLL_TARGET = 1.5  # long-poll p50 against SSE p50
BATCH = 10
LEASE = 30


SLICE = 0.5  # seconds: the measured window is counted in slices this long
STEADY = 0.9  # the steady rate: this percentile of the slices' rates


@dataclass
class Consumed:
    label: str
    messages: int  # consumed in the window
    window_s: float
    requests: int
    empty: int  # takes that found the queue empty
    errors: int
    slices: list[int] = field(default_factory=list)  # messages consumed in each SLICE

    @property
    def rate(self) -> float:
        return self.messages / self.window_s if self.window_s else 0.0

    @property
    def steady_rate(self) -> float:
        """The rate of the fastest slices (percentile STEADY): on a shared machine other
        work comes in short spells that only ever slow a slice down."""
        return percentile(sorted(self.slices), STEADY) / SLICE

    @staticmethod
    def combined(runs: list[Consumed]) -> Consumed:
        """Several runs of one kind as one."""
        return Consumed(
            runs[0].label,
            sum(run.messages for run in runs),
            sum(run.window_s for run in runs),
            sum(run.requests for run in runs),
            sum(run.empty for run in runs),
            sum(run.errors for run in runs),
            [n for run in runs for n in run.slices],
        )


class LeasesScenario(Scenario):
    name = "leases"
    title = "leases: leased take + ack vs plain pop; long-poll wake-up vs SSE delivery"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        n = options.lease_consumers
        return [
            Check(
                "leases", f"leased take + ack >= {LEASED_TARGET}x plain pop msg/s ({n} consumers)"
            ),
            Check(
                "leases",
                f"n={BATCH} + one ack >= {BATCH_TARGET:g}x plain pop msg/s ({n} consumers)",
            ),
            Check("leases", f"long-poll wake-up p50 <= {LONG_POLL_TARGET}x SSE delivery p50"),
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        broker = BrokerServer(ctx.workdir("broker")).start()
        window = opts.duration / opts.lease_rounds
        ctx.out(
            f"  machine: {cpu_count()} cores shared; server: 1 twistd process (pid "
            f"{broker.pid}) + 1 embedded valkey-server; client: 1 process (asyncio), "
            f"{opts.lease_consumers} keep-alive connections in a closed loop; value "
            f"{opts.value_size} bytes; {opts.lease_rounds} rounds of a plain, a leased and a "
            f"batch run (warm-up {opts.warmup:g} s, measured {window:.3g} s each), each kind's "
            "runs taken together"
        )
        try:
            runs = self._consume_runs(ctx, broker)
            latencies = asyncio.run(_wake_up_latencies(broker.port, opts))
        finally:
            broker.stop()
        self._report(ctx, result, runs, latencies)

    @staticmethod
    def _consume_runs(ctx: Context, broker: BrokerServer) -> list[Consumed]:
        """Rounds of one run of each kind, interleaved, so that a slow spell of a shared
        machine falls on every kind alike; each kind's runs are then taken together."""
        opts = ctx.options
        value = "v" * opts.value_size
        window = opts.duration / opts.lease_rounds
        kinds = (
            ("plain pop       GET /q/<q>", "plain", 1.0),
            ("leased + ack    GET ?lease + DELETE ?receipt", "lease", 1.0),
            (f"n={BATCH} + 1 ack   GET ?n={BATCH}&lease + DELETE", "batch", 4.0),
        )
        runs: dict[str, list[Consumed]] = {mode: [] for _, mode, _ in kinds}
        expected = 12_000.0  # plain pops/s until measured: every run must find its queue full
        for _ in range(opts.lease_rounds):
            for label, mode, factor in kinds:
                queue = f"lease-{mode}-{uuid.uuid4().hex[:8]}"
                wanted = int(expected * (opts.warmup + window) * factor * 1.5) + 1000
                _prefill(broker, queue, wanted, value)
                run = asyncio.run(
                    _consume(broker.port, queue, mode, label, opts.lease_consumers, opts, window)
                )
                runs[mode].append(run)
                if mode == "plain":
                    expected = max(expected, run.steady_rate * 1.2)
        for label, mode, _ in kinds:
            rounds = " / ".join(per_second(run.rate) for run in runs[mode])
            ctx.out(f"  {label}: msg/s by round {rounds}")
        return [Consumed.combined(runs[mode]) for _, mode, _ in kinds]

    @staticmethod
    def _report(ctx: Context, result: ScenarioResult, runs: list[Consumed], lat: dict) -> None:
        table = Table(
            ["run", "steady msg/s", "x plain", "mean msg/s", "x plain", "requests/s",
             "empty takes", "errors"]
        )  # fmt: skip
        plain, plain_mean = runs[0].steady_rate, runs[0].rate
        for run in runs:
            table.add(
                run.label,
                per_second(run.steady_rate),
                f"{run.steady_rate / plain:.2f}" if plain else "-",
                per_second(run.rate),
                f"{run.rate / plain_mean:.2f}" if plain_mean else "-",
                per_second(run.requests / run.window_s if run.window_s else 0),
                run.empty,
                run.errors,
            )
        ctx.out()
        ctx.out(table.render())
        ctx.out(
            f"  steady: the rate of the {SLICE:g} s slices at the {STEADY * 100:.0f}th "
            "percentile, every round taken together (brief spells of other work on a shared "
            "machine only slow slices down); mean: messages over the measured windows"
        )
        long_poll, sse = sorted(lat["long_poll"]), sorted(lat["sse"])
        table = Table(["delivery", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"])
        for label, values in (("long poll  POST -> GET ?wait=", long_poll),
                              ("SSE        POST -> event", sse)):  # fmt: skip
            table.add(
                label,
                len(values),
                ms(percentile(values, 0.5)),
                ms(percentile(values, 0.9)),
                ms(percentile(values, 0.99)),
                ms(values[-1] if values else None),
            )
        ctx.out()
        ctx.out(table.render())
        ctx.out("  one message at a time, the two kinds interleaved; no other load")
        leased = runs[1].steady_rate / plain if plain else 0
        batch = runs[2].steady_rate / plain if plain else 0
        lp50, sse50 = percentile(long_poll, 0.5), percentile(sse, 0.5)
        ratio = lp50 / sse50 if sse50 else float("inf")
        checks = result.checks
        checks[0].judge(leased >= LEASED_TARGET, f"{leased:.2f}x")
        checks[1].judge(batch >= BATCH_TARGET, f"{batch:.2f}x")
        checks[2].judge(
            ratio <= LONG_POLL_TARGET, f"{ms(lp50)} ms vs {ms(sse50)} ms = {ratio:.2f}x"
        )
        for check, run in zip(checks[:2], runs[1:], strict=True):
            if run.empty or run.errors or runs[0].empty:
                check.note = "some takes found the queue empty or failed"


async def _consume(
    port: int, queue: str, mode: str, label: str, workers: int, opts, window: float
) -> Consumed:
    """``workers`` closed-loop consumers for warm-up + ``window`` s; count what the window saw."""
    path = f"/q/{quote(queue)}"
    take = {
        "plain": path,
        "lease": f"{path}?lease={LEASE}",
        "batch": f"{path}?n={BATCH}&lease={LEASE}",
    }[mode]
    take_raw = encode_request("GET", take, port=port)
    start = time.monotonic() + opts.warmup
    end = start + window
    totals = {"messages": 0, "requests": 0, "empty": 0, "errors": 0}
    slices = [0] * max(1, int(window / SLICE))  # a last partial slice is not counted

    async def worker() -> None:
        conn = await HttpConnection(port).open()
        try:
            while time.monotonic() < end:
                try:
                    got, requests = await _one_round(conn, port, path, take_raw, mode)
                except (OSError, asyncio.IncompleteReadError, RuntimeError):
                    totals["errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
                now = time.monotonic()
                if start <= now <= end:
                    totals["messages"] += got
                    totals["requests"] += requests
                    totals["empty"] += got == 0
                    index = int((now - start) / SLICE)
                    if index < len(slices):
                        slices[index] += got
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return Consumed(label, totals["messages"], window, totals["requests"],
                    totals["empty"], totals["errors"], slices)  # fmt: skip


async def _one_round(
    conn: HttpConnection, port: int, path: str, take_raw: bytes, mode: str
) -> tuple[int, int]:
    """One take (and its ack): messages consumed, requests made."""
    response = await conn.request(take_raw, "GET")
    if response.status == 204:
        return 0, 1
    if response.status != 200:
        raise RuntimeError(f"take answered {response.status}")
    if mode == "plain":
        return 1, 1
    body = json.loads(response.body)
    taken = body if isinstance(body, list) else [body]
    if not taken:
        return 0, 1
    query = "&".join(f"receipt={quote(m['receipt'])}" for m in taken)
    acked = await conn.request(encode_request("DELETE", f"{path}?{query}", port=port), "DELETE")
    if acked.status != 200:
        raise RuntimeError(f"ack answered {acked.status}")
    return len(taken), 2


async def _answered_at(reader: asyncio.StreamReader) -> tuple[int, int]:
    response = await read_response(reader, "GET")
    return response.status, time.monotonic_ns()


async def _wake_up_latencies(port: int, opts) -> dict[str, list[int]]:
    """Long-poll wake-up and SSE delivery, one message at a time, interleaved."""
    polled, streamed = f"poll-{uuid.uuid4().hex[:8]}", f"sse-{uuid.uuid4().hex[:8]}"
    recorder = Recorder()
    sse = SseConsumer(port, streamed, recorder)
    await sse.connect()
    sse.start()
    publisher = await HttpConnection(port).open()
    long_poll: list[int] = []
    samples = opts.wake_up_samples
    try:
        recorder.recording = True
        for i in range(samples):
            # long poll: park a GET, then post; time from the POST leaving to the answer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(encode_request("GET", f"/q/{polled}?wait=10", port=port))
            await writer.drain()
            await asyncio.sleep(0.01)  # parked by now
            answer = asyncio.ensure_future(_answered_at(reader))
            sent = time.monotonic_ns()
            post = encode_request("POST", f"/q/{polled}", port=port,
                                  body=form_body(value="x"), content_type=FORM)  # fmt: skip
            await publisher.request(post, "POST")
            status, answered = await answer
            if status == 200:
                long_poll.append(answered - sent)
            writer.close()
            # SSE: the same for a streaming consumer
            received = sse.received
            post = encode_request(
                "POST",
                f"/q/{streamed}",
                port=port,
                body=form_body(value=stamped_value(i, opts.value_size)),
                content_type=FORM,
            )
            await publisher.request(post, "POST")
            deadline = time.monotonic() + 5
            while sse.received == received and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
        recorder.recording = False
    finally:
        publisher.close()
        await sse.close()
    return {"long_poll": long_poll, "sse": recorder.latencies_ns}
