"""``fsync``: what ``--fsync`` costs adds. POST /q/<q> req/s and p50/p99 latency of
a broker whose embedded Valkey runs ``appendfsync always``, ``everysec`` (the
default: the baseline every ratio is against) and ``no``.

One broker per policy, all three started first, each on a fresh embedded Valkey in
the work dir; each one's Valkey is asked (``CONFIG GET appendfsync``) that it runs
the policy meant. The same closed-loop load, a few keep-alive connections (so that
a write batch holds few adds and ``always`` pays its disk sync often), runs in
interleaved rounds over the three, so that a slow spell of a shared machine falls
on every policy alike; each policy's runs are then taken together. The disk the
data dirs are on is named, with what one small append + fsync costs on it: on
tmpfs an fsync costs nothing and ``always`` would look free. No target: the
figures say what durability costs on this machine's disk.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import LoadResult, LoadSpec, percentile
from bench.redisinfo import RespConnection
from bench.report import ScenarioResult, Table, ms, noise_warning, per_second
from bench.rest import produce_spec
from bench.scenario import Context, Scenario, cpu_count
from bench.servers import BrokerServer, ServerError

BASELINE = "everysec"
POLICIES = (BASELINE, "always", "no")  # the baseline first: each round starts with it
CONNECTIONS = 4  # keep-alive connections of every run
ROUNDS = 3  # runs of each policy, interleaved; each lasts --duration / ROUNDS
DISK_SAMPLES = 200  # small appends, each fsynced, to time the disk


@dataclass
class Policy:
    """One ``--fsync`` policy: its broker, its load, and its runs (one per round)."""

    name: str
    broker: BrokerServer
    spec: LoadSpec
    runs: list[tuple[LoadResult, dict]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        window = sum(load.window_s for load, _ in self.runs)
        return sum(load.completed for load, _ in self.runs) / window if window else 0.0

    def latency(self, fraction: float) -> float:
        latencies = sorted(ns for load, _ in self.runs for ns in load.latencies_ns)
        return percentile(latencies, fraction)

    def cpu(self, name: str) -> float | None:
        """CPU % of ``name`` over every run, weighted by the runs' windows."""
        pairs = [(cpu.get(name), load.window_s) for load, cpu in self.runs]
        pairs = [(value, window) for value, window in pairs if value is not None]
        total = sum(window for _, window in pairs)
        return sum(value * window for value, window in pairs) / total if total else None

    def count(self, what) -> int:
        return sum(what(load) for load, _ in self.runs)


class FsyncScenario(Scenario):
    name = "fsync"
    title = "fsync: add req/s and p99 with appendfsync always / everysec / no"

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        window = opts.duration / ROUNDS
        policies: list[Policy] = []
        try:
            for name in POLICIES:
                broker = BrokerServer(ctx.workdir(f"fsync-{name}"), ["--fsync", name]).start()
                policies.append(Policy(name, broker, _spec(opts, broker.port, window)))
                _check_policy(broker, name)
            self._describe(ctx, window)
            for number in range(1, ROUNDS + 1):
                for policy in policies:
                    servers = {"broker": policy.broker.pid, "valkey": policy.broker.valkey_pid()}
                    load, cpu = ctx.measure(policy.spec, servers)
                    policy.runs.append((load, cpu))
                    warning = noise_warning(f"{policy.name} (round {number})", cpu.get("others"))
                    if warning:
                        ctx.out(warning)
        finally:
            for policy in policies:
                policy.broker.stop()
        self._report(ctx, policies)

    @staticmethod
    def _describe(ctx: Context, window: float) -> None:
        opts = ctx.options
        fstype, device = _filesystem(ctx.root)  # the data dirs are in it
        p50, p99 = _fsync_cost(ctx.root)
        ctx.out(
            f"  machine: {cpu_count()} cores shared; one broker per policy (1 twistd process + "
            f"1 embedded valkey-server each, started together); client: {opts.client_procs} "
            f"load-generator process(es), {CONNECTIONS} keep-alive connections in a closed "
            f"loop; value {opts.value_size} bytes; {ROUNDS} rounds of a run of each policy "
            f"(warm-up {opts.warmup:g} s, measured {window:.3g} s each), each policy's runs "
            "taken together"
        )
        ctx.out(
            f"  disk: data dirs on {fstype} ({device}); a {len(_APPEND)}-byte append + fsync "
            f"there takes p50 {p50 / 1e6:.2f} ms, p99 {p99 / 1e6:.2f} ms ({DISK_SAMPLES} samples)"
        )
        if fstype in ("tmpfs", "ramfs"):
            ctx.out("  note: on a memory file system an fsync costs nothing; 'always' looks free")

    @staticmethod
    def _report(ctx: Context, policies: list[Policy]) -> None:
        base = policies[0]
        table = Table(
            ["appendfsync", "req/s", "x everysec", "p50 ms", "p99 ms", "p99 x everysec",
             "non-2xx", "errors", "broker CPU%", "valkey CPU%", "others CPU%"]
        )  # fmt: skip
        for policy in policies:
            table.add(
                policy.name,
                per_second(policy.rate),
                _times(policy.rate, base.rate),
                ms(policy.latency(0.50)),
                ms(policy.latency(0.99)),
                _times(policy.latency(0.99), base.latency(0.99)),
                policy.count(lambda load: load.count(lambda s: not 200 <= s < 300)),
                policy.count(lambda load: load.errors),
                _pct(policy.cpu("broker")),
                _pct(policy.cpu("valkey")),
                _pct(policy.cpu("others")),
            )
        ctx.out()
        ctx.out(table.render())
        for policy in policies:
            rounds = " / ".join(per_second(load.rate) for load, _ in policy.runs)
            ctx.out(f"  {policy.name}: req/s by round {rounds}")
            for load, _ in policy.runs:
                for sample in load.error_samples[:1]:
                    ctx.out(f"  error in '{policy.name}': {sample}")
        ctx.out()
        ratios = "; ".join(
            f"{policy.name} req/s {_times(policy.rate, base.rate)}x, "
            f"p99 {_times(policy.latency(0.99), base.latency(0.99))}x"
            for policy in policies[1:]
        )
        ctx.out(f"  against {BASELINE}: {ratios}   (no target)")


# -- helpers ------------------------------------------------------------------------------

_APPEND = b"*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$100\r\n" + b"v" * 100 + b"\r\n"  # an AOF entry's size


def _spec(opts, port: int, window: float) -> LoadSpec:
    """POST /q/<q>, a queue of its own per broker."""
    spec = produce_spec(opts, f"fsync-{uuid.uuid4().hex[:8]}")
    return dataclasses.replace(spec, port=port, connections=CONNECTIONS, duration=window)


def _check_policy(broker: BrokerServer, policy: str) -> None:
    with RespConnection(broker.valkey_socket) as valkey:
        answer = valkey.command("CONFIG", "GET", "appendfsync")
    if answer != ["appendfsync", policy]:
        raise ServerError(f"the broker started with --fsync {policy} runs Valkey with {answer}")


def _filesystem(path: Path) -> tuple[str, str]:
    """The type and device of the file system ``path`` is on (from /proc/mounts)."""
    best = ("", "unknown", "unknown")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mount, fstype = line.split()[:3]
                inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[0]):
                    best = (mount, fstype, device)
    except OSError:
        pass
    return best[1], best[2]


def _fsync_cost(directory: Path) -> tuple[float, float]:
    """p50 and p99 (ns) of one small append + fsync to a file in ``directory``."""
    path = directory / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(DISK_SAMPLES):
            started = time.perf_counter_ns()
            os.write(fd, _APPEND)
            os.fsync(fd)
            samples.append(time.perf_counter_ns() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    samples.sort()
    return percentile(samples, 0.50), percentile(samples, 0.99)


def _times(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
