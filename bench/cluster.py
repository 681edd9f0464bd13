"""``cluster``: RestMQ on a local Valkey Cluster (``--redis-cluster``), 3 primaries with
a replica each, formed by ``restmq.runtime.local_cluster`` from the embedded valkey-server.

1. Routing cost: produce and pop req/s of one broker process on the cluster against
   the same broker on one standalone valkey-server (TCP as well, configured as the
   embedded one), the load spread over ``ROUTING_QUEUES`` queues so that it is not all
   one slot. Target: the cluster >= 0.85x standalone.
2. The store's scaling: the same load over ``--cluster-queues`` queues through a broker
   run with ``--cluster-workers`` processes; each primary's CPU seconds (from /proc)
   per 10,000 messages moved (adds + pops). Target: each within 35% of their mean.
3. Failover: the primary holding a queue being written to is SIGKILLed; seconds until
   POSTs to that queue are answered 200 again (target <= 10 s), and whether a queue on
   another shard was answered 200 all along (``bench.failover``).
"""

from __future__ import annotations

import argparse
import dataclasses
import uuid
from collections import Counter
from dataclasses import dataclass

from bench.failover import Failover, free_cluster_base, measure_failover, queue_owner
from bench.loadgen import LoadResult, percentile
from bench.report import Check, ScenarioResult, Table, ms, noise_warning, per_second
from bench.rest import _prefill, produce_spec
from bench.scenario import Context, Scenario, cpu_count
from bench.servers import BrokerServer, ValkeyServer, cpu_seconds, stop_all
from bench.workers import WorkersBroker
from restmq.runtime.local_cluster import LocalCluster, Node

ROUTING_QUEUES = 10
ROUTING_TARGET = 0.85  # cluster / standalone req/s
BALANCE_TARGET = 0.35  # largest deviation of a primary's CPU per message from the mean
FAILOVER_TARGET = 10.0  # seconds from the kill to writes answered again
FAILOVER_LIMIT = 30.0  # seconds the failover is watched at most
PRIMARIES, REPLICAS = 3, 1
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: how soon a dead primary is voted out
PER_MESSAGES = 10_000


@dataclass
class Loaded:
    """A produce run and a pop run over some queues, with the CPU use meanwhile."""

    post: LoadResult
    post_cpu: dict
    pop: LoadResult
    pop_cpu: dict
    spent: Counter  # CPU seconds of each server over both runs, warm-ups included

    @property
    def moved(self) -> tuple[int, int]:
        """Messages added and popped over both runs, warm-ups included."""
        added = self.post.count(lambda s: 200 <= s < 300, everything=True)
        return added, self.pop.count(lambda s: s == 200, everything=True)

    @property
    def empty_pops(self) -> int:
        return self.pop.count(lambda s: s == 204, everything=True)


class ClusterScenario(Scenario):
    name = "cluster"
    title = "cluster: RestMQ on a Valkey Cluster (routing cost, shard balance, failover)"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        return [
            Check("cluster", f"produce on a cluster >= {ROUTING_TARGET}x standalone req/s"),
            Check("cluster", f"pop on a cluster >= {ROUTING_TARGET}x standalone req/s"),
            Check(
                "cluster",
                f"each primary's CPU per message within {BALANCE_TARGET:.0%} of the mean "
                f"({options.cluster_queues} queues)",
            ),
            Check("cluster", f"writes resume <= {FAILOVER_TARGET:g} s after a primary is killed"),
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        tag = f"bench-{uuid.uuid4().hex[:6]}"
        routing_queues = [f"{tag}-r{i}" for i in range(ROUTING_QUEUES)]
        self._describe(ctx)
        standalone = self._standalone(ctx, routing_queues)
        cluster = LocalCluster(
            ctx.workdir("cluster"),
            base_port=free_cluster_base(PRIMARIES * (1 + REPLICAS)),
            primaries=PRIMARIES,
            replicas=REPLICAS,
            node_timeout_ms=NODE_TIMEOUT_MS,
        )
        try:
            cluster.start()
            ctx.out(
                "  cluster: "
                + ", ".join(f"{_node_name(node)} (pid {node.pid})" for node in cluster.nodes)
            )
            clustered = self._on_cluster(ctx, cluster, routing_queues, workers=1)
            self._report_routing(ctx, result.checks[:2], standalone, clustered)
            queues = [f"{tag}-s{i}" for i in range(ctx.options.cluster_queues)]
            workers = ctx.options.cluster_workers
            spread = self._on_cluster(ctx, cluster, queues, workers=workers)
            self._report_scaling(ctx, result.checks[2], cluster, queues, spread, workers)
            failover = self._failover(ctx, cluster, tag)
            self._report_failover(ctx, result.checks[3], failover)
        finally:
            stop_all()  # the brokers first: they talk to the cluster
            cluster.stop()

    @staticmethod
    def _describe(ctx: Context) -> None:
        opts = ctx.options
        ctx.out(
            f"  machine: {cpu_count()} cores, shared by the brokers, every valkey-server and "
            "the load generator"
        )
        ctx.out(
            f"  cluster: {PRIMARIES} primaries with {REPLICAS} replica each (one valkey-server "
            f"per node, cluster-node-timeout {NODE_TIMEOUT_MS} ms); standalone: one "
            "valkey-server; both on loopback TCP, append-only file fsynced every second"
        )
        ctx.out(
            f"  client: {opts.client_procs} load-generator process(es), {opts.connections} "
            f"keep-alive connections in a closed loop, each taking the queues in turn; value "
            f"{opts.value_size} bytes; warm-up {opts.warmup} s, measured {opts.duration} s per run"
        )

    # -- measuring ------------------------------------------------------------------

    @staticmethod
    def _standalone(ctx: Context, queues: list[str]) -> Loaded:
        valkey = ValkeyServer(ctx.workdir("standalone"))
        valkey.start()
        try:
            store = ["--redis-host", "127.0.0.1", "--redis-port", str(valkey.port)]
            broker = BrokerServer(ctx.workdir("standalone-broker"), store).start()
            ctx.out(
                f"  standalone: valkey-server pid {valkey.pid} on port {valkey.port}, "
                f"broker pid {broker.pid} on port {broker.port}"
            )
            try:
                return _load(ctx, broker, {"broker": broker.pid, "valkey": valkey.pid}, queues)
            finally:
                broker.stop()
        finally:
            valkey.stop()

    @staticmethod
    def _on_cluster(ctx: Context, cluster: LocalCluster, queues: list[str], workers: int) -> Loaded:
        seeds = ["--redis-cluster", ",".join(cluster.seeds)]
        broker = WorkersBroker(ctx.workdir("cluster-broker"), workers, seeds).start()
        servers = {"broker": broker.pid}
        for number, pid in enumerate(broker.worker_pids(), 1):
            servers[f"worker {number}"] = pid
        ctx.out(
            f"  broker with --workers {workers} on the cluster: pids "
            f"{', '.join(map(str, servers.values()))} on port {broker.port}; "
            f"load over {len(queues)} queues"
        )
        servers.update({_node_name(node): node.pid for node in cluster.nodes})
        try:
            return _load(ctx, broker, servers, queues)
        finally:
            broker.stop()

    @staticmethod
    def _failover(ctx: Context, cluster: LocalCluster, tag: str) -> Failover:
        seeds = ["--redis-cluster", ",".join(cluster.seeds)]
        broker = WorkersBroker(ctx.workdir("failover-broker"), 1, seeds).start()
        ctx.out(f"  failover: broker pid {broker.pid} on port {broker.port}")
        try:
            return measure_failover(
                cluster,
                broker.port,
                f"{tag}-f",
                "v" * ctx.options.value_size,
                settle=ctx.options.warmup,
                limit=FAILOVER_LIMIT,
            )
        finally:
            broker.stop()

    # -- reporting ------------------------------------------------------------------

    @staticmethod
    def _report_routing(
        ctx: Context, checks: list[Check], standalone: Loaded, clustered: Loaded
    ) -> None:
        table = Table(
            ["run", "req/s", "p50 ms", "p99 ms", "non-2xx", "errors", "broker CPU%",
             "store CPU%", "client CPU%", "others CPU%"]
        )  # fmt: skip
        runs = [
            ("standalone  POST /q/<q>", standalone.post, standalone.post_cpu),
            ("cluster     POST /q/<q>", clustered.post, clustered.post_cpu),
            ("standalone  GET  /q/<q>", standalone.pop, standalone.pop_cpu),
            ("cluster     GET  /q/<q>", clustered.pop, clustered.pop_cpu),
        ]
        for label, load, cpu in runs:
            latencies = sorted(load.latencies_ns)
            table.add(
                label,
                per_second(load.rate),
                ms(percentile(latencies, 0.50)),
                ms(percentile(latencies, 0.99)),
                load.count(lambda s: not 200 <= s < 300),
                load.errors,
                _pct(_brokers(cpu)),
                _pct(_stores(cpu)),
                _pct(load.client_cpu_percent),
                _pct(cpu.get("others")),
            )
        ctx.out()
        ctx.out(table.render())
        ctx.out(f"  CPU% is of one core ({cpu_count()} cores = {100 * cpu_count()}%)")
        for label, cpu in (("POST", clustered.post_cpu), ("GET ", clustered.pop_cpu)):
            ctx.out(f"  cluster {label} store CPU%: {_store_shares(cpu)}")
        for label, load, cpu in runs:
            warning = noise_warning(label, cpu.get("others"))
            if warning:
                ctx.out(warning)
            for sample in load.error_samples[:2]:
                ctx.out(f"  error in '{label.strip()}': {sample}")
        produce = _ratio(clustered.post, standalone.post)
        pop = _ratio(clustered.pop, standalone.pop)
        ctx.out(
            f"  ratio cluster / standalone:  produce {produce:.2f}x   pop {pop:.2f}x   "
            f"(target >= {ROUTING_TARGET:.2f}x each)"
        )
        ctx.out(
            f"  pops that found a queue empty (204): standalone {standalone.empty_pops}, "
            f"cluster {clustered.empty_pops}"
        )
        checks[0].judge(produce >= ROUTING_TARGET, f"{produce:.2f}x")
        checks[1].judge(pop >= ROUTING_TARGET, f"{pop:.2f}x")

    @staticmethod
    def _report_scaling(
        ctx: Context,
        check: Check,
        cluster: LocalCluster,
        queues: list[str],
        spread: Loaded,
        workers: int,
    ) -> None:
        ctx.out()
        for label, load, cpu in (
            ("POST", spread.post, spread.post_cpu),
            ("GET ", spread.pop, spread.pop_cpu),
        ):
            ctx.out(
                f"  {label} over {len(queues)} queues: {per_second(load.rate)} req/s, "
                f"non-2xx {load.count(lambda s: not 200 <= s < 300)}, errors {load.errors}; "
                f"CPU% broker ({workers} process(es)) {_pct(_brokers(cpu))}, "
                f"{_store_shares(cpu)}, client {_pct(load.client_cpu_percent)}"
            )
            warning = noise_warning(f"{label} over {len(queues)} queues", cpu.get("others"))
            if warning:
                ctx.out(warning)
        added, popped = spread.moved
        moved = added + popped
        ctx.out(
            f"  messages moved: {moved:,} ({added:,} adds + {popped:,} pops, warm-ups included)"
        )
        held = Counter(queue_owner(cluster, queue).port for queue in queues)
        costs = {
            node.port: spread.spent[_node_name(node)] * PER_MESSAGES / max(1, moved)
            for node in cluster.primaries
        }
        mean = sum(costs.values()) / len(costs)
        table = Table(["shard", "queues", "CPU s", f"CPU s per {PER_MESSAGES:,} msg", "vs mean"])
        deviations = []
        for node in cluster.primaries:
            deviation = costs[node.port] / mean - 1 if mean else 0.0
            deviations.append(abs(deviation))
            table.add(
                _node_name(node),
                held[node.port],
                f"{spread.spent[_node_name(node)]:.2f}",
                f"{costs[node.port]:.3f}",
                f"{deviation:+.0%}",
            )
        ctx.out(table.render())
        ctx.out(
            f"  CPU s: user + system time of each primary's valkey-server over both runs; "
            f"target: each within {BALANCE_TARGET:.0%} of the mean"
        )
        ctx.out(
            f"  note: on this {cpu_count()}-core machine the shards share the cores with the "
            "brokers and the load generator, so total throughput cannot grow with the shards "
            "here; what the per-shard figures show is that the work spreads evenly over them. "
            "With a core per shard, throughput would grow with the shards until the brokers "
            "are the bottleneck."
        )
        worst = max(deviations)
        check.judge(worst <= BALANCE_TARGET, f"largest deviation {worst:.0%}")
        if spread.empty_pops:
            check.note = f"{spread.empty_pops} pops found a queue empty"

    @staticmethod
    def _report_failover(ctx: Context, check: Check, failover: Failover) -> None:
        resumed = failover.resumed_s
        table = Table(["failover", "measured"], left=2)
        table.add(
            "killed (SIGKILL)", f"primary {failover.victim_port}, holding {failover.victim_queue}"
        )
        table.add(
            f"first POST /q/{failover.victim_queue} answered 200",
            "none" if resumed is None else f"{resumed:.2f} s after the kill",
        )
        table.add(
            f"answers to POST /q/{failover.victim_queue} sent after the kill",
            _statuses(failover.victim_statuses),
        )
        table.add(
            "replica now primary",
            "none" if failover.promoted is None else f"port {failover.promoted}",
        )
        kept = "yes" if failover.other_kept_answering else "no"
        table.add(
            f"POST /q/{failover.other_queue} (another shard) 200 throughout",
            f"{kept} ({_statuses(failover.other_statuses)}, longest wait "
            f"{failover.other_longest_gap_s:.2f} s)",
        )
        ctx.out()
        ctx.out(table.render())
        ctx.out(
            f"  watched for {failover.observed_s:.1f} s after the kill (at most "
            f"{FAILOVER_LIMIT:g} s); target: writes answered 200 again within "
            f"{FAILOVER_TARGET:g} s"
        )
        if resumed is None:
            check.judge(False, f"not within {FAILOVER_LIMIT:g} s")
        else:
            check.judge(resumed <= FAILOVER_TARGET, f"{resumed:.2f} s")
        if not failover.other_kept_answering:
            check.note = "a queue on another shard was not answered 200 throughout the failover"


def _load(ctx: Context, broker: BrokerServer, servers: dict, queues: list[str]) -> Loaded:
    """A produce run, then a pop run on queues filled beforehand, each request to the
    next queue in turn; the CPU seconds of ``servers`` over both runs."""
    opts = ctx.options
    paths = tuple(f"/q/{queue}" for queue in queues)
    post = dataclasses.replace(produce_spec(opts, queues[0]), port=broker.port, paths=paths)
    spent: Counter = Counter()

    def measured(spec):
        before = {name: cpu_seconds(pid) for name, pid in servers.items() if pid}
        load, cpu = ctx.measure(spec, servers)
        for name, start in before.items():
            end = cpu_seconds(servers[name])
            if start is not None and end is not None:
                spent[name] += end - start
        return load, cpu

    post_load, post_cpu = measured(post)
    # enough in every queue that no pop finds it empty (pops run about twice as fast)
    each = int(2 * post_load.rate * (opts.warmup + opts.duration) * 1.5 / len(queues)) + 100
    value = "v" * opts.value_size
    waiting = min(_prefill(broker, queue, each, value) for queue in queues)
    # a connection may be a request ahead of the others on any queue
    budget = max(1, (waiting - opts.connections) * len(queues))
    pop = dataclasses.replace(post, method="GET", body=b"", content_type=None, max_requests=budget)
    pop_load, pop_cpu = measured(pop)
    return Loaded(post_load, post_cpu, pop_load, pop_cpu, spent)


def _node_name(node: Node) -> str:
    return f"{node.role} {node.port}"


def _brokers(cpu: dict) -> float | None:
    shares = [v for k, v in cpu.items() if k == "broker" or k.startswith("worker ")]
    return None if None in shares or not shares else sum(shares)


def _stores(cpu: dict) -> float | None:
    shares = [v for k, v in cpu.items() if k == "valkey" or k.split(" ")[0] in _ROLES]
    return None if None in shares or not shares else sum(shares)


_ROLES = ("primary", "replica")


def _store_shares(cpu: dict) -> str:
    parts = []
    for role in _ROLES:
        shares = [v for k, v in cpu.items() if k.startswith(role + " ")]
        if shares:
            parts.append(f"{role} {'/'.join(_pct(v) for v in shares)}")
    return ", ".join(parts) or f"valkey {_pct(cpu.get('valkey'))}"


def _statuses(statuses: Counter) -> str:
    named = {("no answer" if status is None else str(status)): n for status, n in statuses.items()}
    return ", ".join(f"{status} x{n}" for status, n in sorted(named.items())) or "none"


def _ratio(load: LoadResult, baseline: LoadResult) -> float:
    return load.rate / baseline.rate if baseline.rate else 0.0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
