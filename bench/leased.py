"""``leased``: at-least-once streaming, acked message by message.

N leased WebSocket consumers (``/ws/<q>?lease=S&prefetch=P``) ack each message with
an ``{"ack": receipt}`` frame; N leased SSE consumers (``/c/<q>?lease=S&prefetch=P``)
ack each one with ``DELETE /q/<q>?receipt=R`` on a keep-alive connection of their
own. A publisher keeps the queue full; the figure is messages acked per second.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from bench.consumers import Recorder, SseConsumer, WsConsumer, close_all, connect_all
from bench.httpclient import HttpConnection, HttpError, encode_request
from bench.loadgen import percentile
from bench.publish import flood_publish
from bench.report import ScenarioResult, Table, ms, per_second
from bench.scenario import Context, Scenario
from bench.servers import BrokerServer, CpuSampler
from bench.streaming import _call, _cpu_cells, _process_line, _server_pids, wait_registered

LEASE_SECONDS = 60


class _Acks:
    """What one leased consumer acked, and what the broker refused."""

    def __init__(self) -> None:
        self.acked = 0
        self.refused = 0
        self.errors: list[str] = []


class LeasedWsConsumer(WsConsumer):
    """Acks every message with a frame as soon as it arrives."""

    kind = "ws"

    def __init__(self, port: int, queue: str, recorder: Recorder, prefetch: int) -> None:
        super().__init__(port, f"{queue}?lease={LEASE_SECONDS}&prefetch={prefetch}", recorder)
        self.acks = _Acks()

    async def _read_loop(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame)
            if "error" in message:  # the broker refused an ack
                self.acks.refused += 1
                continue
            self.deliver(frame)
            await self.ws.send(json.dumps({"ack": message["receipt"]}))
            self.acks.acked += 1  # a refusal would come back as an error frame


class LeasedSseConsumer(SseConsumer):
    """Acks every message with ``DELETE /q/<q>?receipt=R`` on its own connection."""

    kind = "sse"

    def __init__(self, port: int, queue: str, recorder: Recorder, prefetch: int) -> None:
        super().__init__(port, f"{queue}?lease={LEASE_SECONDS}&prefetch={prefetch}", recorder)
        self.base = queue
        self.acks = _Acks()
        self.receipts: asyncio.Queue[str] = asyncio.Queue()
        self._acker: asyncio.Task | None = None

    def deliver(self, text: str | bytes) -> None:
        super().deliver(text)
        message = json.loads(text)
        if isinstance(message, dict) and "receipt" in message:
            self.receipts.put_nowait(message["receipt"])

    def start(self) -> None:
        super().start()
        self._acker = asyncio.create_task(self._ack_loop())

    async def _ack_loop(self) -> None:
        conn = await HttpConnection(self.port).open()
        try:
            while True:
                receipt = await self.receipts.get()
                raw = encode_request("DELETE", f"/q/{self.base}?receipt={receipt}", port=self.port)
                try:
                    response = await conn.request(raw, "DELETE")
                except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
                    self.acks.errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = await HttpConnection(self.port).open()
                    continue
                if response.status == 200:
                    self.acks.acked += 1
                else:
                    self.acks.refused += 1
        finally:
            conn.close()

    async def close(self) -> None:
        if self._acker is not None:
            self._acker.cancel()
        await super().close()


LEASED_KINDS = {"ws": LeasedWsConsumer, "sse": LeasedSseConsumer}


class LeasedScenario(Scenario):
    name = "leased"
    title = "leased: messages acked per second by leased stream consumers"

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        broker = BrokerServer(ctx.workdir("broker")).start()
        _process_line(
            ctx,
            broker,
            "1 process (asyncio): the leased consumers (WebSocket acking with frames, SSE "
            "acking with DELETE on one keep-alive connection each) + 1 publisher posting "
            "batches of 50, at most 2,000 messages ahead of the acks",
        )
        table = Table(
            ["transport", "consumers", "prefetch", "acked msg/s", "per consumer", "p50 ms",
             "p99 ms", "refused", "server CPU%", "valkey CPU%", "client CPU%", "others CPU%"]
        )  # fmt: skip
        notes = []
        for transport in ("ws", "sse"):
            m = asyncio.run(self._one(broker, transport, opts))
            latencies = sorted(m["latencies"])
            table.add(
                "WebSocket (ack frames)" if transport == "ws" else "SSE (ack over HTTP)",
                opts.leased_consumers,
                opts.prefetch,
                per_second(m["rate"]),
                per_second(m["rate"] / opts.leased_consumers),
                ms(percentile(latencies, 0.5)),
                ms(percentile(latencies, 0.99)),
                m["refused"],
                *_cpu_cells(m["cpu"], m["client_cpu"]),
            )
            if m["errors"]:
                notes.append(f"{transport}: {m['errors'][:2]}")
        broker.stop()
        ctx.out()
        ctx.out(table.render())
        ctx.out(
            "  latency: publish -> delivery, time waiting in the queue included (the publisher "
            "runs up to 2,000 messages ahead of the acks)"
        )
        for note in notes:
            ctx.out(f"  note: {note}")

    @staticmethod
    async def _one(broker: BrokerServer, transport: str, opts) -> dict:
        port, queue = broker.port, f"leased-{transport}-{uuid.uuid4().hex[:6]}"
        recorder = Recorder()
        count = opts.leased_consumers
        consumers = [
            LEASED_KINDS[transport](port, queue, recorder, opts.prefetch) for _ in range(count)
        ]
        try:
            await connect_all(consumers)
            await wait_registered(port, [queue], count)
            loop = asyncio.get_running_loop()
            start = loop.time() + opts.warmup
            end = start + opts.duration
            marks: dict[str, tuple[int, float]] = {}

            def acked() -> int:
                return sum(c.acks.acked for c in consumers)

            def mark(name: str) -> None:
                marks[name] = (acked(), time.process_time())
                recorder.recording = name == "start"

            loop.call_at(start, mark, "start")
            loop.call_at(end, mark, "end")
            sampler = CpuSampler(_server_pids(broker))
            sampler.arm(start, end)
            published = await flood_publish(port, queue, end + 0.01, opts.value_size, acked)
            sampler.finish()
            if "end" not in marks:
                mark("end")
            (acked0, cpu0), (acked1, cpu1) = marks["start"], marks["end"]
            return {
                "rate": (acked1 - acked0) / opts.duration,
                "latencies": recorder.latencies_ns,
                "refused": sum(c.acks.refused for c in consumers),
                "cpu": sampler,
                "client_cpu": 100 * (cpu1 - cpu0) / opts.duration,
                "errors": published.errors + [e for c in consumers for e in c.acks.errors],
            }
        finally:
            await close_all(consumers)
            await _call(port, "DELETE", f"/q/{queue}")
