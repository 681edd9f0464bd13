"""Streaming consumers (SSE, COMET, WebSocket) against a real broker.

- ``latency``: publish -> delivery latency with N SSE consumers at a fixed rate;
- ``fanout``: messages delivered per second to 1, 10, 100 consumers per transport;
- ``memory``: broker RSS growth with many idle streaming consumers connected.

Each starts its own broker on a fresh embedded Valkey. A route that answers 404
(streaming not there yet) skips the scenario with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable

from bench.consumers import (
    KINDS,
    Consumer,
    Recorder,
    RouteMissing,
    SseConsumer,
    close_all,
    connect_all,
    stamped_value,
)
from bench.httpclient import HttpConnection, encode_request, form_body
from bench.loadgen import percentile
from bench.publish import FORM, flood_publish, paced_publish
from bench.report import Check, ScenarioResult, Table, mib, ms, noise_warning, per_second
from bench.scenario import Context, Scenario, cpu_count
from bench.servers import BrokerServer, CpuSampler, rss_bytes

LATENCY_P50_MS = 5.0
LATENCY_P99_MS = 50.0
RSS_GROWTH_LIMIT = 50 * 1024 * 1024
IDLE_QUEUES = 10


# -- small HTTP helpers -------------------------------------------------------


async def _call(port: int, method: str, path: str, body: bytes = b"", content_type=None):
    conn = await HttpConnection(port).open()
    try:
        raw = encode_request(method, path, port=port, body=body, content_type=content_type)
        return await conn.request(raw, method)
    finally:
        conn.close()


async def consumer_count(port: int, queue: str) -> int | None:
    """``consumers`` of ``/stats/<q>``, None when the broker does not report it."""
    response = await _call(port, "GET", f"/stats/{queue}")
    if response.status != 200:
        return None
    count = json.loads(response.body).get("consumers")
    return count if isinstance(count, int) else None


async def wait_registered(port: int, queues: list[str], expected: int, timeout: float = 10.0):
    """Wait until the broker counts ``expected`` consumers on ``queues``; return its count."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [await consumer_count(port, queue) for queue in queues]
        total = None if None in counts else sum(counts)
        if total is None or total >= expected or time.monotonic() > deadline:
            return total
        await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _alive(consumers: list[Consumer]) -> list[Consumer]:
    return [c for c in consumers if not c.ended]


def _describe_losses(consumers: list[Consumer]) -> str:
    gone = [c for c in consumers if c.ended]
    if not gone:
        return ""
    reasons = {repr(c.failure) if c.failure else "stream ended by the broker" for c in gone}
    return f"{len(gone)} consumer(s) lost their stream ({'; '.join(sorted(reasons))[:300]})"


def _server_pids(broker: BrokerServer) -> dict[str, int | None]:
    return {"server": broker.pid, "valkey": broker.valkey_pid()}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _others(sampler: CpuSampler, client: float) -> float | None:
    return sampler.others(sampler.percent("server"), sampler.percent("valkey"), client)


def _cpu_cells(sampler: CpuSampler, client: float) -> list[str]:
    server, valkey = sampler.percent("server"), sampler.percent("valkey")
    return [_pct(server), _pct(valkey), _pct(client), _pct(_others(sampler, client))]


def _process_line(ctx: Context, broker: BrokerServer, client: str) -> None:
    ctx.out(
        f"  machine: {cpu_count()} cores shared; server: 1 twistd process (pid {broker.pid}) "
        f"+ 1 embedded valkey-server (pid {broker.valkey_pid()}); client: {client}"
    )


# -- latency ------------------------------------------------------------------


class LatencyScenario(Scenario):
    name = "latency"
    title = "latency: publish -> SSE delivery at a fixed rate"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        where = f"at {options.rate:,.0f} msg/s, {options.sse_consumers} SSE consumers"
        return [
            Check("streaming", f"publish->delivery p50 <= {LATENCY_P50_MS:g} ms {where}"),
            Check("streaming", f"publish->delivery p99 <= {LATENCY_P99_MS:g} ms {where}"),
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        broker = BrokerServer(ctx.workdir("broker")).start()
        _process_line(
            ctx,
            broker,
            f"1 process (asyncio): {opts.sse_consumers} SSE consumers on raw sockets + a "
            f"publisher (8 keep-alive connections, one POST per message, open loop)",
        )
        m = asyncio.run(self._measure(broker, opts))
        broker.stop()

        latencies = sorted(m["latencies"])
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        table = Table(
            ["consumers", "target msg/s", "published msg/s", "deliveries", "expected",
             "p50 ms", "p90 ms", "p99 ms", "max ms", "server CPU%", "valkey CPU%", "client CPU%",
             "others CPU%"]
        )  # fmt: skip
        table.add(
            opts.sse_consumers,
            per_second(opts.rate),
            per_second(m["published"].rate),
            m["delivered"],
            m["expected"],
            ms(p50),
            ms(percentile(latencies, 0.9)),
            ms(p99),
            ms(latencies[-1] if latencies else None),
            *_cpu_cells(m["cpu"], m["client_cpu"]),
        )
        ctx.out()
        ctx.out(table.render())
        notes = []
        published = m["published"]
        if published.rate < 0.95 * opts.rate:
            notes.append(
                f"the publisher reached only {published.rate:,.0f} msg/s "
                f"(up to {published.max_lag_s * 1000:.0f} ms behind schedule)"
            )
        if m["delivered"] < m["expected"]:
            notes.append(f"{m['expected'] - m['delivered']:,} deliveries missing")
        if published.errors or set(published.statuses) - {200}:
            notes.append(
                f"publish answers {dict(published.statuses)}, errors {published.errors[:2]}"
            )
        if m["losses"]:
            notes.append(m["losses"])
        ctx.out(f"  broker counted {m['registered']} consumer(s) on the queue (/stats)")
        warning = noise_warning("latency", _others(m["cpu"], m["client_cpu"]))
        if warning:
            ctx.out(warning)
        for note in notes:
            ctx.out(f"  note: {note}")
        at = f"at {published.rate:,.0f} msg/s"
        ok = not notes
        result.checks[0].judge(ok and p50 <= LATENCY_P50_MS * 1e6, f"{ms(p50)} ms {at}")
        result.checks[1].judge(ok and p99 <= LATENCY_P99_MS * 1e6, f"{ms(p99)} ms {at}")
        for check in result.checks:
            check.note = "; ".join(notes)

    @staticmethod
    async def _measure(broker: BrokerServer, opts) -> dict:
        port, queue = broker.port, f"lat-{uuid.uuid4().hex[:8]}"
        recorder = Recorder()
        consumers = [SseConsumer(port, queue, recorder) for _ in range(opts.sse_consumers)]
        try:
            await connect_all(consumers)
            registered = await wait_registered(port, [queue], len(consumers))
            warm = await paced_publish(port, queue, opts.rate, opts.warmup, opts.value_size)
            await wait_until(lambda: all(c.received >= warm.sent for c in _alive(consumers)), 10)
            before = [c.received for c in consumers]
            sampler = CpuSampler(_server_pids(broker))
            now = time.monotonic()
            sampler.arm(now, now + opts.duration + 60)  # ended by finish() below
            cpu = time.process_time()
            recorder.recording = True
            published = await paced_publish(port, queue, opts.rate, opts.duration, opts.value_size)
            sampler.finish()
            client_cpu = 100 * (time.process_time() - cpu) / max(published.elapsed_s, 1e-9)
            wanted = [b + published.sent for b in before]
            await wait_until(
                lambda: all(c.received >= w for c, w in zip(consumers, wanted, strict=True)
                            if not c.ended),
                10,
            )  # fmt: skip
            recorder.recording = False
            delivered = sum(c.received - b for c, b in zip(consumers, before, strict=True))
            return {
                "latencies": recorder.latencies_ns,
                "published": published,
                "delivered": delivered,
                "expected": published.sent * len(consumers),
                "cpu": sampler,
                "client_cpu": client_cpu,
                "registered": registered,
                "losses": _describe_losses(consumers),
            }
        finally:
            await close_all(consumers)


# -- fan-out ------------------------------------------------------------------


class FanoutScenario(Scenario):
    name = "fanout"
    title = "fanout: messages delivered per second to N consumers (broadcast)"

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        broker = BrokerServer(ctx.workdir("broker")).start()
        _process_line(
            ctx,
            broker,
            "1 process (asyncio): the consumers (SSE/COMET on raw sockets, WebSocket with "
            "`websockets`) + 1 publisher connection posting batches of 50 "
            '({"values": [...]}), at most 2,000 messages ahead of the slowest consumer',
        )
        table = Table(
            ["transport", "consumers", "published msg/s", "delivered msg/s", "per consumer",
             "p50 ms", "p99 ms", "server CPU%", "valkey CPU%", "client CPU%", "others CPU%",
             "lost streams"]
        )  # fmt: skip
        notes, missing = [], []
        for transport in opts.fanout_transports:
            for count in opts.fanout:
                try:
                    m = asyncio.run(self._one(broker, transport, count, opts))
                except RouteMissing as exc:
                    missing.append(f"{transport}: streaming route not available yet ({exc})")
                    break
                latencies = sorted(m["latencies"])
                table.add(
                    transport,
                    count,
                    per_second(m["published_rate"]),
                    per_second(m["delivered_rate"]),
                    per_second(m["delivered_rate"] / count),
                    ms(percentile(latencies, 0.5)),
                    ms(percentile(latencies, 0.99)),
                    *_cpu_cells(m["cpu"], m["client_cpu"]),
                    m["lost"],
                )
                if m["losses"]:
                    notes.append(f"{transport} x{count}: {m['losses']}")
                warning = noise_warning(f"{transport} x{count}", _others(m["cpu"], m["client_cpu"]))
                if warning:
                    notes.append(warning.strip().removeprefix("warning: "))
                if m["errors"]:
                    notes.append(f"{transport} x{count}: publish errors {m['errors'][:2]}")
        broker.stop()
        if not table.rows:
            raise RouteMissing("; ".join(missing))
        ctx.out()
        ctx.out(table.render())
        for note in notes:
            ctx.out(f"  note: {note}")
        for note in missing:
            ctx.out(f"  SKIPPED {note}")

    @staticmethod
    async def _one(broker: BrokerServer, transport: str, count: int, opts) -> dict:
        port, queue = broker.port, f"fan-{transport}-{count}-{uuid.uuid4().hex[:6]}"
        recorder = Recorder()
        consumers = [KINDS[transport](port, queue, recorder) for _ in range(count)]
        try:
            await connect_all(consumers)
            await wait_registered(port, [queue], count)
            loop = asyncio.get_running_loop()
            start = loop.time() + opts.warmup
            end = start + opts.duration
            marks: dict[str, tuple[int, float, int]] = {}
            stats_box: list = []

            def mark(name: str) -> None:
                sent = stats_box[0].sent if stats_box else 0
                marks[name] = (sum(c.received for c in consumers), time.process_time(), sent)
                recorder.recording = name == "start"

            loop.call_at(start, mark, "start")
            loop.call_at(end, mark, "end")
            sampler = CpuSampler(_server_pids(broker))
            sampler.arm(start, end)

            def slowest() -> int:
                alive = _alive(consumers)
                return min(c.received for c in alive) if alive else 1 << 62

            published = await flood_publish(
                port, queue, end + 0.01, opts.value_size, slowest, stats_sink=stats_box
            )
            sampler.finish()
            if "end" not in marks:
                mark("end")
            (got0, cpu0, sent0), (got1, cpu1, sent1) = marks["start"], marks["end"]
            return {
                "published_rate": (sent1 - sent0) / opts.duration,
                "delivered_rate": (got1 - got0) / opts.duration,
                "latencies": recorder.latencies_ns,
                "cpu": sampler,
                "client_cpu": 100 * (cpu1 - cpu0) / opts.duration,
                "lost": sum(c.ended for c in consumers),
                "losses": _describe_losses(consumers),
                "errors": published.errors,
            }
        finally:
            await close_all(consumers)
            await _call(port, "DELETE", f"/q/{queue}")


# -- memory -------------------------------------------------------------------


class IdleMemoryScenario(Scenario):
    name = "memory"
    title = "memory: broker RSS with idle streaming consumers"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        return [
            Check(
                "streaming",
                f"broker RSS growth <= 50 MB with {options.idle_consumers:,} idle consumers",
            )
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        broker = BrokerServer(ctx.workdir("broker")).start()
        _process_line(
            ctx,
            broker,
            f"1 process (asyncio): {opts.idle_consumers:,} consumers "
            f"({'/'.join(opts.idle_transports)} in turn) on {IDLE_QUEUES} queues",
        )
        m = asyncio.run(self._measure(broker, opts))
        broker.stop()

        table = Table(["process", "RSS before", "RSS with consumers", "growth", "per consumer"])
        for name, before, after in (
            ("broker (twistd)", m["rss0"], m["rss1"]),
            ("embedded valkey", m["vk0"], m["vk1"]),
        ):
            growth = None if before is None or after is None else after - before
            per = None if growth is None else f"{growth / opts.idle_consumers / 1024:.1f} KB"
            table.add(name, mib(before), mib(after), mib(growth), per or "-")
        ctx.out()
        ctx.out(table.render())
        ctx.out(
            f"  connected {opts.idle_consumers:,} consumers in {m['connect_s']:.1f} s; "
            f"broker counted {m['registered']} (/stats); "
            f"then one message per queue reached {m['alive']:,} of them"
        )
        growth = m["rss1"] - m["rss0"]
        check = result.checks[0].judge(growth <= RSS_GROWTH_LIMIT, mib(growth))
        if m["alive"] < opts.idle_consumers:
            check.status = "MISSED"
            check.note = f"only {m['alive']} of {opts.idle_consumers} consumers were still served"
            ctx.out(f"  note: {check.note}")

    @staticmethod
    async def _measure(broker: BrokerServer, opts) -> dict:
        port, prefix = broker.port, f"idle-{uuid.uuid4().hex[:6]}"
        queues = [f"{prefix}-{i}" for i in range(IDLE_QUEUES)]
        kinds = [KINDS[name] for name in opts.idle_transports]
        valkey = broker.valkey_pid()

        # warm the broker up (first stream of each kind, first delivery) before measuring
        warm = [kind(port, prefix + "-warm") for kind in kinds]
        try:
            await connect_all(warm)
            await _post(port, prefix + "-warm", stamped_value(0, opts.value_size))
            await wait_until(lambda: all(c.received for c in warm), 10)
        finally:
            await close_all(warm)
        await asyncio.sleep(1.0)
        rss0, vk0 = rss_bytes(broker.pid), rss_bytes(valkey) if valkey else None

        consumers = [
            kinds[i % len(kinds)](port, queues[i % IDLE_QUEUES]) for i in range(opts.idle_consumers)
        ]
        try:
            started = time.monotonic()
            await connect_all(consumers)
            connect_s = time.monotonic() - started
            registered = await wait_registered(port, queues, len(consumers))
            await asyncio.sleep(2.0)  # idle: let the broker settle
            rss1, vk1 = rss_bytes(broker.pid), rss_bytes(valkey) if valkey else None
            for queue in queues:
                await _post(port, queue, stamped_value(0, opts.value_size))
            await wait_until(lambda: all(c.received or c.ended for c in consumers), 15)
            alive = sum(1 for c in consumers if c.received)
        finally:
            await close_all(consumers)
        return {
            "rss0": rss0,
            "rss1": rss1,
            "vk0": vk0,
            "vk1": vk1,
            "connect_s": connect_s,
            "registered": registered,
            "alive": alive,
        }


async def _post(port: int, queue: str, value: str) -> None:
    response = await _call(port, "POST", f"/q/{queue}", form_body(value=value), FORM)
    if response.status != 200:
        raise RuntimeError(f"POST /q/{queue} answered {response.status}: {response.body[:200]!r}")
