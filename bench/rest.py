"""Produce (``POST /q/<q>``) and pop (``GET /q/<q>``) against a real broker,
next to the bare cyclone handler (on our connection class and on stock
cyclone), batches of 100 messages, and the broker's Redis round trips per request."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bench import redisinfo
from bench.httpclient import HttpConnection, encode_request, form_body
from bench.loadgen import LoadResult, LoadSpec, percentile
from bench.report import Check, ScenarioResult, Table, fmt, ms, noise_warning, per_second
from bench.scenario import Context, Scenario, cpu_count
from bench.servers import BaselineServer, BrokerServer

FORM = "application/x-www-form-urlencoded"
RATIO_TARGET = 0.7  # broker / stock cyclone
CONNECTION_TARGET = 0.9  # bare cyclone on our connection class / stock cyclone
BATCH = 100  # messages per batch request
BATCH_TARGET = 40.0  # batch messages/s over single-message requests/s
PREFILL_BATCH = 1000
PREFILL_CONNECTIONS = 4
PREFILL_MAX = 1_000_000  # messages: bounds Valkey's memory for the batch pops


@dataclass
class Run:
    """One measured load: what the load generator saw and the CPU use meanwhile."""

    label: str
    load: LoadResult
    cpu: dict
    messages: int = 1  # messages each request carries
    answers: int = 0  # answers over every repeat, warm-ups included (0: those of ``load``)


@dataclass
class BrokerFigures:
    post: Run
    get: Run
    post_batch: Run
    get_batch: Run
    post_trips: redisinfo.RoundTrips
    get_trips: redisinfo.RoundTrips
    post_calls: Counter  # INFO commandstats delta over the timed POST run
    get_calls: Counter
    prefilled: int  # messages waiting before the pop run
    prefilled_batch: int  # messages waiting before the batch pop run


class RestScenario(Scenario):
    name = "rest"
    title = "rest: POST /q/<q> (produce) and GET /q/<q> (pop), broker vs bare cyclone"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        return [
            Check("rest", f"produce: bare cyclone, our connection >= {CONNECTION_TARGET}x stock"),
            Check("rest", f"pop: bare cyclone, our connection >= {CONNECTION_TARGET}x stock"),
            Check("rest", f"produce (POST /q/<q>) >= {RATIO_TARGET}x stock cyclone req/s"),
            Check("rest", f"pop (GET /q/<q>) >= {RATIO_TARGET}x stock cyclone req/s"),
            Check("rest", f"produce {BATCH} per request >= {BATCH_TARGET:g}x single msg/s"),
            Check(
                "rest", f"pop {BATCH} per request (?n={BATCH}) >= {BATCH_TARGET:g}x single msg/s"
            ),
            Check("rest", "exactly 1 Redis round trip per POST /q/<q>"),
            Check("rest", "exactly 1 Redis round trip per GET /q/<q>"),
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        post = produce_spec(opts, queue)
        pop = dataclasses.replace(post, method="GET", body=b"", content_type=None)
        self._describe(ctx)
        stock_post, stock_get = self._measure_bare(ctx, post, pop, stock=True)
        bare_post, bare_get = self._measure_bare(ctx, post, pop, stock=False)
        broker = self._measure_broker(ctx, post, pop, queue, stock_get.load.rate)
        runs = [stock_post, stock_get, bare_post, bare_get, broker.post, broker.get]
        self._report(ctx, result, [*runs, broker.post_batch, broker.get_batch], broker)

    @staticmethod
    def _describe(ctx: Context) -> None:
        opts = ctx.options
        ctx.out(
            f"  machine: {cpu_count()} cores, shared by the servers and the load generator; "
            "one server runs at a time"
        )
        ctx.out(
            "  server processes: broker = 1 twistd process + 1 embedded valkey-server; "
            "bare cyclone = 1 python process (same reactor, BrokerHTTPConnection, FixedChunked); "
            "stock cyclone = the same handler on cyclone as shipped (its Application, "
            "HTTPConnection and transforms)"
        )
        ctx.out(
            f"  client: {opts.client_procs} load-generator process(es) (asyncio), "
            f"{opts.connections} HTTP/1.1 keep-alive connections in a closed loop; "
            f"value {opts.value_size} bytes (form field; batches: a JSON body of {BATCH} "
            f"values, pops ?n={BATCH}); warm-up {opts.warmup} s, measured {opts.duration} s "
            "per run" + (f", the fastest of {opts.repeat} runs kept" if opts.repeat > 1 else "")
        )

    @staticmethod
    def _measure_bare(ctx: Context, post: LoadSpec, pop: LoadSpec, stock: bool) -> tuple[Run, Run]:
        bare = BaselineServer(ctx.workdir("baseline"), ctx.options.value_size, stock).start()
        name = "stock cyclone" if stock else "bare cyclone "
        ctx.out(f"  {name.strip()} handler on port {bare.port} (pid {bare.pid})")
        servers = {"server": bare.pid}
        try:
            post_run = _best(ctx, f"{name} POST /q/<q>", _on(post, bare.port), servers)
            get_run = _best(ctx, f"{name} GET  /q/<q>", _on(pop, bare.port), servers)
        finally:
            bare.stop()
        return post_run, get_run

    @staticmethod
    def _measure_broker(
        ctx: Context, post: LoadSpec, pop: LoadSpec, queue: str, bare_get_rate: float
    ) -> BrokerFigures:
        opts = ctx.options
        broker = BrokerServer(ctx.workdir("broker")).start()
        servers = {"server": broker.pid, "valkey": broker.valkey_pid()}
        ctx.out(
            f"  broker on port {broker.port} (twistd pid {broker.pid}, "
            f"valkey pid {servers['valkey']}, data dir {broker.data_dir})"
        )
        value = "v" * opts.value_size
        try:
            post_trips, get_trips = _round_trips(broker, queue + "-rt", opts)

            before = redisinfo.command_calls(broker.valkey_socket)
            post_run = _best(ctx, "broker        POST /q/<q>", _on(post, broker.port), servers)
            post_calls = redisinfo.calls_between(
                before, redisinfo.command_calls(broker.valkey_socket)
            )

            # enough messages that no pop finds the queue empty, and not one pop more
            rate = max(bare_get_rate, 2 * post_run.load.rate)
            wanted = int(rate * (opts.warmup + opts.duration) * 1.5) + 1000
            prefilled = 0

            def pop_spec() -> LoadSpec:
                nonlocal prefilled, before
                prefilled = _prefill(broker, queue, wanted, value)
                # Count from here: the fill's adds are not the pops' commands. (With
                # --repeat, the count is of the last run, the answers of the best one.)
                before = redisinfo.command_calls(broker.valkey_socket)
                return _on(pop, broker.port, max_requests=prefilled)

            get_run = _best(ctx, "broker        GET  /q/<q>", pop_spec, servers)
            get_calls = redisinfo.calls_between(
                before, redisinfo.command_calls(broker.valkey_socket)
            )

            batch_queue = queue + "-batch"
            body = json.dumps({"values": [value] * BATCH}).encode()
            post_batch_spec = _on(
                post, broker.port, path=f"/q/{batch_queue}", body=body,
                content_type="application/json",
            )  # fmt: skip
            post_batch = _best(
                ctx, f"broker        POST /q/<q> {BATCH} values", post_batch_spec, servers, BATCH
            )
            # pops of BATCH each, never one that finds fewer waiting
            rate = max(2 * BATCH * post_batch.load.rate, BATCH * get_run.load.rate)
            wanted = min(PREFILL_MAX, int(rate * (opts.warmup + opts.duration) * 1.5) + 1000)
            prefilled_batch = 0

            def get_batch_spec() -> LoadSpec:
                nonlocal prefilled_batch
                prefilled_batch = _prefill(broker, batch_queue, wanted, value)
                return _on(
                    pop, broker.port, path=f"/q/{batch_queue}?n={BATCH}",
                    max_requests=max(1, prefilled_batch // BATCH),
                )  # fmt: skip

            get_batch = _best(
                ctx, f"broker        GET  /q/<q>?n={BATCH}", get_batch_spec, servers, BATCH
            )
        finally:
            broker.stop()
        return BrokerFigures(
            post_run, get_run, post_batch, get_batch, post_trips, get_trips,
            post_calls, get_calls, prefilled, prefilled_batch,
        )  # fmt: skip

    @staticmethod
    def _report(
        ctx: Context, result: ScenarioResult, runs: list[Run], broker: BrokerFigures
    ) -> None:
        opts = ctx.options
        table = Table(
            ["run", "req/s", "msg/s", "p50 ms", "p99 ms", "answers", "non-2xx", "errors",
             "server CPU%", "valkey CPU%", "client CPU%", "others CPU%"]
        )  # fmt: skip
        for run in runs:
            load, latencies = run.load, sorted(run.load.latencies_ns)
            table.add(
                run.label,
                per_second(load.rate),
                per_second(load.rate * run.messages),
                ms(percentile(latencies, 0.50)),
                ms(percentile(latencies, 0.99)),
                load.completed,
                load.count(lambda s: not 200 <= s < 300),
                load.errors,
                _pct(run.cpu.get("server")),
                _pct(run.cpu.get("valkey")),
                _pct(load.client_cpu_percent),
                _pct(run.cpu.get("others")),
            )
        ctx.out()
        ctx.out(table.render())
        ctx.out(
            f"  CPU% is of one core ({cpu_count()} cores = {100 * cpu_count()}%); 'others' is "
            "every other process on the machine during the window"
        )
        for run in runs:
            warning = noise_warning(run.label, run.cpu.get("others"))
            if warning:
                ctx.out(warning)
            for sample in run.load.error_samples[:2]:
                ctx.out(f"  error in '{run.label}': {sample}")

        stock_post, stock_get, bare_post, bare_get = (run.load for run in runs[:4])
        conn_post, conn_pop = _ratio(bare_post, stock_post), _ratio(bare_get, stock_get)
        post_ratio = _ratio(broker.post.load, stock_post)
        pop_ratio = _ratio(broker.get.load, stock_get)
        batch_post = _ratio(broker.post_batch.load, broker.post.load) * BATCH
        batch_pop = _ratio(broker.get_batch.load, broker.get.load) * BATCH
        ctx.out()
        ctx.out(
            f"  ratio bare cyclone (our connection class) / stock cyclone:  produce "
            f"{conn_post:.2f}x   pop {conn_pop:.2f}x   (target >= {CONNECTION_TARGET:.2f}x each)"
        )
        ctx.out(
            f"  ratio broker / stock cyclone:  produce {post_ratio:.2f}x   pop {pop_ratio:.2f}x"
            f"   (target >= {RATIO_TARGET:.2f}x each)"
        )
        ctx.out(
            f"  ratio broker / bare cyclone:  produce {_ratio(broker.post.load, bare_post):.2f}x"
            f"   pop {_ratio(broker.get.load, bare_get):.2f}x"
        )
        ctx.out(
            f"  batches of {BATCH}, msg/s over single-message req/s:  produce {batch_post:.1f}x"
            f"   pop {batch_pop:.1f}x   (target >= {BATCH_TARGET:g}x each: a batch costs at most "
            f"{BATCH / BATCH_TARGET:g} single requests)"
        )
        pops = broker.get.load
        empty = pops.count(lambda s: s == 204, everything=True)
        ctx.out(
            f"  pops that found the queue empty (204): {empty} of "
            f"{sum(pops.all_statuses.values()):,} (queue pre-filled to {broker.prefilled:,} "
            "messages" + (", all popped before the window ended" if pops.budget_exhausted else "")
            + ")"
        )  # fmt: skip
        batch_pops = broker.get_batch.load
        ctx.out(
            f"  batch pops: queue pre-filled to {broker.prefilled_batch:,} messages"
            + (", all popped before the window ended" if batch_pops.budget_exhausted else "")
        )

        ctx.out()
        ctx.out(
            f"  Redis round trips per request: MONITOR over {opts.round_trip_sample} requests "
            "made one by one (commands the broker sent; those run inside Lua are listed apart)"
        )
        ctx.out(_trips_line("POST", broker.post_trips))
        ctx.out(_trips_line("GET ", broker.get_trips))
        ctx.out(
            "  Redis commands per request over the timed runs: INFO commandstats before/after, "
            "divided by the answers (warm-up included); commandstats also counts commands run "
            "inside Lua"
        )
        post_sent = _commands_line(ctx, "POST", broker.post_calls, broker.post, broker.post_trips)
        get_sent = _commands_line(ctx, "GET ", broker.get_calls, broker.get, broker.get_trips)

        checks = result.checks
        checks[0].judge(conn_post >= CONNECTION_TARGET, f"{conn_post:.2f}x")
        checks[1].judge(conn_pop >= CONNECTION_TARGET, f"{conn_pop:.2f}x")
        checks[2].judge(post_ratio >= RATIO_TARGET, f"{post_ratio:.2f}x")
        checks[3].judge(pop_ratio >= RATIO_TARGET, f"{pop_ratio:.2f}x")
        checks[4].judge(batch_post >= BATCH_TARGET, f"{batch_post:.1f}x")
        checks[5].judge(batch_pop >= BATCH_TARGET, f"{batch_pop:.1f}x")
        for check, trips, sent in (
            (checks[6], broker.post_trips, post_sent),
            (checks[7], broker.get_trips, get_sent),
        ):
            exact = trips.per_request == 1.0 and abs(sent - 1.0) < 0.005
            check.judge(exact, f"{trips.per_request:.2f} (MONITOR), {sent:.2f} (commandstats)")
        if empty:
            checks[3].note = f"{empty} pops found the queue empty"
        short = batch_pops.count(lambda s: s != 200, everything=True)
        if short:
            checks[5].note = f"{short} batch pops were not answered 200"


def _best(
    ctx: Context,
    label: str,
    spec: LoadSpec | Callable[[], LoadSpec],
    servers: dict,
    messages: int = 1,
) -> Run:
    """The fastest of ``--repeat`` runs: other people's work on a shared machine only
    ever slows a run down. ``spec`` may be a function, called before each run (a
    pop run tops its queue up first)."""
    runs = []
    for _ in range(ctx.options.repeat):
        runs.append(ctx.measure(spec() if callable(spec) else spec, servers))
    load, cpu = max(runs, key=lambda run: run[0].rate)
    answers = sum(sum(run[0].all_statuses.values()) for run in runs)
    return Run(label, load, cpu, messages, answers)


def _on(spec: LoadSpec, port: int, **changes) -> LoadSpec:
    return dataclasses.replace(spec, port=port, **changes)


def _ratio(broker: LoadResult, bare: LoadResult) -> float:
    return broker.rate / bare.rate if bare.rate else 0.0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def produce_spec(opts: argparse.Namespace, queue: str) -> LoadSpec:
    """POST /q/<queue> with a form value of --value-size bytes, as every REST run sends
    it (the port is set per server)."""
    return LoadSpec(
        port=0,
        method="POST",
        path=f"/q/{queue}",
        body=form_body(value="v" * opts.value_size),
        content_type=FORM,
        connections=opts.connections,
        warmup=opts.warmup,
        duration=opts.duration,
    )


def _prefill(broker: BrokerServer, queue: str, wanted: int, value: str) -> int:
    """Top the queue up to ``wanted`` messages (batch adds); return how many wait in it."""
    waiting = _queue_length(broker, queue)
    missing = max(0, wanted - waiting)

    async def fill() -> None:
        batches = math.ceil(missing / PREFILL_BATCH)
        body = json.dumps({"values": [value] * PREFILL_BATCH}).encode()
        raw = encode_request(
            "POST", f"/q/{queue}", port=broker.port, body=body, content_type="application/json"
        )
        left = batches

        async def worker() -> None:
            nonlocal left
            conn = await HttpConnection(broker.port).open()
            try:
                while left > 0:
                    left -= 1
                    response = await conn.request(raw, "POST")
                    if response.status != 200:
                        raise RuntimeError(
                            f"pre-filling {queue} failed: {response.status} {response.body[:200]!r}"
                        )
            finally:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(PREFILL_CONNECTIONS)))

    if missing:
        asyncio.run(fill())
    return _queue_length(broker, queue)


def _queue_length(broker: BrokerServer, queue: str) -> int:
    async def ask() -> int:
        conn = await HttpConnection(broker.port).open()
        try:
            response = await conn.request(
                encode_request("GET", f"/stats/{queue}", port=broker.port), "GET"
            )
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"GET /stats/{queue} answered {response.status}")
        return int(json.loads(response.body)["len"])

    return asyncio.run(ask())


def _round_trips(broker: BrokerServer, queue: str, opts) -> tuple:
    """MONITOR ``round_trip_sample`` POSTs, then as many GETs, one at a time."""
    count = opts.round_trip_sample
    post = encode_request(
        "POST",
        f"/q/{queue}",
        port=broker.port,
        body=form_body(value="v" * opts.value_size),
        content_type=FORM,
    )
    get = encode_request("GET", f"/q/{queue}", port=broker.port)
    statuses: Counter = Counter()

    def sequence(raw: bytes, method: str, n: int) -> float:
        async def go() -> None:
            conn = await HttpConnection(broker.port).open()
            try:
                for _ in range(n):
                    statuses[(method, (await conn.request(raw, method)).status)] += 1
            finally:
                conn.close()

        started = time.monotonic()
        asyncio.run(go())
        return time.monotonic() - started

    # one of each first: a script is loaded into Redis on its first use
    sequence(post, "POST", 2)
    sequence(get, "GET", 1)
    post_trips = redisinfo.count_round_trips(
        broker.valkey_socket, count, lambda: sequence(post, "POST", count)
    )
    get_trips = redisinfo.count_round_trips(
        broker.valkey_socket, count, lambda: sequence(get, "GET", count)
    )
    bad = {key: n for key, n in statuses.items() if key[1] != 200}
    if bad:
        raise RuntimeError(f"round-trip sample got unexpected answers: {bad}")
    return post_trips, get_trips


def _trips_line(label: str, trips: redisinfo.RoundTrips) -> str:
    sent = ", ".join(f"{name} {n / trips.requests:.2f}" for name, n in trips.sent.most_common())
    inside = ", ".join(
        f"{name} {n / trips.requests:.2f}" for name, n in trips.in_scripts.most_common()
    )
    line = f"    {label} {trips.per_request:.2f} per request  (sent: {sent or 'nothing'})"
    if inside:
        line += f"  inside Lua: {inside}"
    if trips.idle_sent:
        line += f"  [background, subtracted: {dict(trips.idle_sent)}]"
    return line


def _commands_line(
    ctx: Context,
    label: str,
    delta: Counter,
    run: Run,
    trips: redisinfo.RoundTrips,
) -> float:
    """Print the commandstats delta per request; return the commands *sent* per request."""
    answers = run.answers or sum(run.load.all_statuses.values()) or 1
    in_lua = set(trips.in_scripts)
    sent = {name: n for name, n in delta.items() if name not in in_lua}
    inside = {name: n for name, n in delta.items() if name in in_lua}
    sent_total = sum(sent.values()) / answers

    def listing(calls: dict) -> str:
        ordered = sorted(calls.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {n / answers:.2f}" for name, n in ordered) or "nothing"

    ctx.out(
        f"    {label} {sum(delta.values()) / answers:.2f} executed per request over "
        f"{fmt(answers)} answers = {sent_total:.2f} sent ({listing(sent)})"
        f" + {sum(inside.values()) / answers:.2f} inside Lua ({listing(inside)})"
    )
    return sent_total
