"""Closed-loop HTTP load: N keep-alive connections, each sending its next request when
the previous answer is in, for a warm-up and then a measured window.

A run is bounded both in time (warm-up + duration) and in request count
(``max_requests``, e.g. the number of messages waiting when measuring pops).
With ``paths`` the requests go to those paths in turn (each connection starting at
its own), e.g. to spread the load over several queues.
With ``unique_header`` every request carries that header with a value no other
request of the run had (e.g. an ``Idempotency-Key``).
With ``processes > 1`` the connections are spread over that many load-generator
processes (spawned, loopback only) that share one measured window.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.httpclient import HttpConnection, HttpError, encode_request

#: called with the measured window (monotonic start, end) once the connections are open
WindowCallback = Callable[[float, float], None]


@dataclass(frozen=True)
class LoadSpec:
    port: int
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None
    connections: int = 16
    warmup: float = 1.0
    duration: float = 8.0
    max_requests: int = 10_000_000
    paths: tuple[str, ...] = ()  # when given, requests cycle over these instead of ``path``
    unique_header: str = ""  # when given, a header whose value differs on every request


@dataclass
class LoadResult:
    latencies_ns: list[int] = field(default_factory=list)  # answers completed in the window
    statuses: Counter = field(default_factory=Counter)  # in the window
    all_statuses: Counter = field(default_factory=Counter)  # warm-up included
    window_s: float = 0.0
    errors: int = 0  # connection-level failures (reset, unreadable answer)
    error_samples: list[str] = field(default_factory=list)
    budget_exhausted: bool = False
    client_cpu_s: float = 0.0
    processes: int = 1

    @property
    def completed(self) -> int:
        return len(self.latencies_ns)

    @property
    def rate(self) -> float:
        return self.completed / self.window_s if self.window_s > 0 else 0.0

    @property
    def client_cpu_percent(self) -> float:
        return 100.0 * self.client_cpu_s / self.window_s if self.window_s > 0 else 0.0

    def count(self, predicate: Callable[[int], bool], everything: bool = False) -> int:
        source = self.all_statuses if everything else self.statuses
        return sum(n for status, n in source.items() if predicate(status))

    @classmethod
    def merge(cls, parts: list[LoadResult]) -> LoadResult:
        merged = cls(processes=len(parts))
        for part in parts:
            merged.latencies_ns.extend(part.latencies_ns)
            merged.statuses.update(part.statuses)
            merged.all_statuses.update(part.all_statuses)
            merged.errors += part.errors
            merged.error_samples.extend(part.error_samples[:3])
            merged.client_cpu_s += part.client_cpu_s
            merged.budget_exhausted |= part.budget_exhausted
            merged.window_s = max(merged.window_s, part.window_s)
        return merged


@dataclass
class _State:
    remaining: int
    start_ns: int
    end_ns: int
    result: LoadResult = field(default_factory=LoadResult)
    last_done_ns: int = 0


_MARK = "\x00unique\x00"  # where a unique header value goes in an encoded request


class _Requests:
    """The encoded requests a connection sends in turn; with a unique header, each one
    is the request's fixed bytes around a value made of its process's token for the run, the
    connection's number and a counter (cheap: two joins, no re-encoding)."""

    def __init__(self, spec: LoadSpec, connection: int, token: str) -> None:
        headers = {spec.unique_header: _MARK} if spec.unique_header else None
        raws = [
            encode_request(
                spec.method, path, port=spec.port, body=spec.body,
                content_type=spec.content_type, headers=headers,
            )
            for path in spec.paths or (spec.path,)
        ]  # fmt: skip
        self.parts = [raw.split(_MARK.encode("latin-1"), 1) for raw in raws]
        self.prefix = f'"{token}-{connection}-'.encode("ascii")
        self.turn = connection
        self.unique = bool(spec.unique_header)

    def next(self) -> bytes:
        parts = self.parts[self.turn % len(self.parts)]
        self.turn += 1
        if not self.unique:
            return parts[0]
        return b"".join((parts[0], self.prefix, str(self.turn).encode("ascii"), b'"', parts[1]))


async def _client_loop(
    conn: HttpConnection, requests: _Requests, method: str, state: _State
) -> None:
    result = state.result
    while True:
        raw = requests.next()
        sent = time.monotonic_ns()
        if sent >= state.end_ns or state.remaining <= 0:
            return
        state.remaining -= 1
        try:
            response = await conn.request(raw, method)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError) as exc:
            result.errors += 1
            if len(result.error_samples) < 3:
                result.error_samples.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)
            continue
        done = time.monotonic_ns()
        result.all_statuses[response.status] += 1
        if state.start_ns <= done <= state.end_ns:
            result.latencies_ns.append(done - sent)
            result.statuses[response.status] += 1
            state.last_done_ns = done


async def _open(spec: LoadSpec, count: int) -> list[HttpConnection]:
    return list(await asyncio.gather(*(HttpConnection(spec.port).open() for _ in range(count))))


async def _drive(
    spec: LoadSpec, conns: list[HttpConnection], start: float, end: float, budget: int
) -> LoadResult:
    """Run the connections until ``end`` (monotonic seconds) or until the budget is spent."""
    token = uuid.uuid4().hex[:12]  # per process: values never repeat across processes
    state = _State(remaining=budget, start_ns=int(start * 1e9), end_ns=int(end * 1e9))
    loop = asyncio.get_running_loop()  # its clock is time.monotonic()
    cpu: dict[str, float] = {}
    loop.call_at(start, lambda: cpu.setdefault("start", time.process_time()))
    try:
        await asyncio.gather(
            *(
                _client_loop(c, _Requests(spec, i, token), spec.method, state)
                for i, c in enumerate(conns)
            )
        )
    finally:
        for conn in conns:
            conn.close()
    cpu_end = time.process_time()
    result = state.result
    result.client_cpu_s = cpu_end - cpu.get("start", cpu_end)
    finished_early = state.remaining <= 0 and state.last_done_ns < state.end_ns
    result.budget_exhausted = finished_early
    if finished_early:
        result.window_s = max(0.0, (state.last_done_ns - state.start_ns) / 1e9)
    else:
        result.window_s = end - start
    return result


async def _run_here(spec: LoadSpec, on_window: WindowCallback | None) -> LoadResult:
    conns = await _open(spec, spec.connections)
    start = time.monotonic() + spec.warmup
    end = start + spec.duration
    if on_window is not None:
        on_window(start, end)
    return await _drive(spec, conns, start, end, spec.max_requests)


# -- several load-generator processes ---------------------------------------


def _worker_main(spec: LoadSpec, connections: int, budget: int, pipe) -> None:
    async def work() -> LoadResult:
        conns = await _open(spec, connections)
        pipe.send("ready")
        loop = asyncio.get_running_loop()
        start, end = await loop.run_in_executor(None, pipe.recv)
        return await _drive(spec, conns, start, end, budget)

    try:
        pipe.send(asyncio.run(work()))
    except BaseException as exc:  # reported by the parent, which owns the output
        pipe.send(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _run_processes(spec: LoadSpec, processes: int, on_window: WindowCallback | None) -> LoadResult:
    context = multiprocessing.get_context("spawn")
    workers = []
    try:
        for connections, budget in zip(
            _split(spec.connections, processes),
            _split(spec.max_requests, processes),
            strict=True,
        ):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker_main, args=(spec, connections, budget, child), daemon=True
            )
            proc.start()
            workers.append((proc, parent))
        for proc, pipe in workers:
            if not pipe.poll(60):
                raise RuntimeError(f"load-generator process {proc.pid} did not start")
            ready = pipe.recv()
            if isinstance(ready, Exception):
                raise ready
        start = time.monotonic() + spec.warmup
        end = start + spec.duration
        if on_window is not None:
            on_window(start, end)
        for _proc, pipe in workers:
            pipe.send((start, end))
        parts = []
        for proc, pipe in workers:
            if not pipe.poll(spec.warmup + spec.duration + 60):
                raise RuntimeError(f"load-generator process {proc.pid} did not report")
            part = pipe.recv()
            if isinstance(part, Exception):
                raise part
            parts.append(part)
        return LoadResult.merge(parts)
    finally:
        for proc, _pipe in workers:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)


def run_load(
    spec: LoadSpec, processes: int = 1, on_window: WindowCallback | None = None
) -> LoadResult:
    """Run ``spec`` and return what was measured in its window."""
    processes = max(1, min(processes, spec.connections))
    if processes == 1:
        return asyncio.run(_run_here(spec, on_window))
    return _run_processes(spec, processes, on_window)


def percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])
