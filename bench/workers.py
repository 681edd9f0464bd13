"""``workers``: produce and pop req/s of one broker process against ``--workers N``.

The same closed-loop load (POST /q/<q>, then GET /q/<q> on a pre-filled queue) runs
against a broker started with ``--workers 1`` and then with ``--workers N``, each on
a fresh embedded Valkey; the CPU use of every broker process and of Valkey is
sampled over each window, and so is how many of the load's connections each
process holds. The produce load starts at the broker's first answer, not once every
process answers: a load balancer's checks and a client pool reconnecting after a
restart come that early too, and keep-alive keeps a connection where it lands. The
target (N workers >= 1.5x one process) is judged only on machines with at least 4
cores: on fewer, the load generator and Valkey take the cores the workers would
need, and the figures are reported without a verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.loadgen import LoadResult, LoadSpec
from bench.report import Check, ScenarioResult, Table, noise_warning, per_second
from bench.rest import _prefill, produce_spec
from bench.scenario import Context, Scenario, cpu_count
from bench.servers import BrokerServer, ServerError

SPEEDUP_TARGET = 1.5
CORES_FOR_TARGET = 4


class WorkersBroker(BrokerServer):
    """A broker run with ``--workers N``."""

    def __init__(self, workdir: Path, workers: int, extra_args: list[str] | None = None) -> None:
        super().__init__(workdir, ["--workers", str(workers), *(extra_args or [])])
        self.workers = workers

    def start(self, timeout: float = 60.0, every_process: bool = True) -> WorkersBroker:
        """Started once every process answers or, without ``every_process``, at the
        first answer (whichever process gives it), every process spawned."""
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < self.workers - 1 or (
            every_process and not self._all_answer()
        ):
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"not all {self.workers} processes answered\n{self.tail()}")
            time.sleep(0.01)
        return self

    def _all_answer(self) -> bool:
        seen = set()
        for _ in range(10 * self.workers):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/health")
                seen.add(json.loads(conn.getresponse().read())["pid"])
            except (OSError, ValueError, KeyError):
                return False
            finally:
                conn.close()
        return seen >= {self.pid, *self.worker_pids()}

    def worker_pids(self) -> list[int]:
        """The worker processes: children of the broker, apart from Valkey."""
        valkey = self.valkey_pid()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == valkey:
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.pid:
                found.append(int(entry.name))
        return sorted(found)

    def children(self) -> list[int]:
        return [*super().children(), *self.worker_pids()]


class ConnectionSplit:
    """How many of the clients' connections to ``port`` each process holds, sampled
    while a load runs; ``split`` is the sample that found the most of them."""

    def __init__(self, port: int, processes: dict[str, int]) -> None:
        self.port = port
        self.processes = processes
        self.split: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="split-sampler", daemon=True)

    def __enter__(self) -> ConnectionSplit:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(0.25):
            sample = {name: self._held(pid) for name, pid in self.processes.items()}
            if sum(sample.values()) >= sum(self.split.values()):
                self.split = sample

    def _held(self, pid: int) -> int:
        try:
            connections = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            return 0
        return sum(
            c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port for c in connections
        )

    def describe(self) -> str:
        total = sum(self.split.values()) or 1
        return ", ".join(
            f"{name} {count} ({100 * count / total:.0f}%)" for name, count in self.split.items()
        )


@dataclass
class Measured:
    workers: int
    post: LoadResult
    post_cpu: dict
    post_split: str
    pop: LoadResult
    pop_cpu: dict
    pop_split: str


class WorkersScenario(Scenario):
    name = "workers"
    title = "workers: produce and pop req/s, --workers 1 vs --workers N"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        n = options.workers
        return [
            Check("rest", f"produce with --workers {n} >= {SPEEDUP_TARGET}x --workers 1"),
            Check("rest", f"pop with --workers {n} >= {SPEEDUP_TARGET}x --workers 1"),
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        opts = ctx.options
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        post = produce_spec(opts, queue)
        ctx.out(
            f"  machine: {cpu_count()} cores, shared by the broker processes, valkey and the "
            f"load generator ({opts.client_procs} process(es), {opts.connections} keep-alive "
            "connections, closed loop)"
        )
        runs = [self._measure(ctx, post, queue, n) for n in (1, opts.workers)]
        self._report(ctx, result, runs)

    @staticmethod
    def _measure(ctx: Context, post: LoadSpec, queue: str, workers: int) -> Measured:
        workdir = ctx.workdir(f"workers{workers}")
        broker = WorkersBroker(workdir, workers).start(every_process=False)
        processes = {"main": broker.pid}
        for number, pid in enumerate(broker.worker_pids(), 1):
            processes[f"worker {number}"] = pid
        servers = {**processes, "valkey": broker.valkey_pid()}
        ctx.out(f"  --workers {workers}: port {broker.port}, pids {servers}")
        try:
            # at once: the load's connections are made right after the first answer
            with ConnectionSplit(broker.port, processes) as post_split:
                post_load, post_cpu = ctx.measure(
                    dataclasses.replace(post, port=broker.port), servers
                )
            wanted = int(2 * post_load.rate * (post.warmup + post.duration) * 1.5) + 1000
            prefilled = _prefill(broker, queue, wanted, "v" * ctx.options.value_size)
            pop = dataclasses.replace(
                post,
                port=broker.port,
                method="GET",
                body=b"",
                content_type=None,
                max_requests=prefilled,
            )
            with ConnectionSplit(broker.port, processes) as pop_split:
                pop_load, pop_cpu = ctx.measure(pop, servers)
        finally:
            broker.stop()
        return Measured(
            workers,
            post_load,
            post_cpu,
            post_split.describe(),
            pop_load,
            pop_cpu,
            pop_split.describe(),
        )

    @staticmethod
    def _report(ctx: Context, result: ScenarioResult, runs: list[Measured]) -> None:
        table = Table(["run", "req/s", "non-2xx", "errors", "CPU% per process", "client CPU%"])
        for run in runs:
            for label, load, cpu in (
                (f"--workers {run.workers}  POST /q/<q>", run.post, run.post_cpu),
                (f"--workers {run.workers}  GET  /q/<q>", run.pop, run.pop_cpu),
            ):
                shares = ", ".join(
                    f"{name} {value:.0f}"
                    for name, value in cpu.items()
                    if value is not None and name != "others"
                )
                table.add(
                    label,
                    per_second(load.rate),
                    load.count(lambda s: not 200 <= s < 300),
                    load.errors,
                    shares,
                    f"{load.client_cpu_percent:.0f}",
                )
        ctx.out()
        ctx.out(table.render())
        ctx.out(f"  CPU% is of one core ({cpu_count()} cores = {100 * cpu_count()}%)")
        ctx.out("  connections held per process (the produce load starts at the first answer):")
        for run in runs:
            ctx.out(f"    --workers {run.workers}  POST: {run.post_split}")
            ctx.out(f"    --workers {run.workers}  GET:  {run.pop_split}")
        for run in runs:
            for label, cpu in (("POST", run.post_cpu), ("GET", run.pop_cpu)):
                warning = noise_warning(f"--workers {run.workers} {label}", cpu.get("others"))
                if warning:
                    ctx.out(warning)
        one, many = runs
        produce = many.post.rate / one.post.rate if one.post.rate else 0.0
        pop = many.pop.rate / one.pop.rate if one.pop.rate else 0.0
        ctx.out()
        ctx.out(
            f"  speed-up with --workers {many.workers}: produce {produce:.2f}x   pop {pop:.2f}x"
            f"   (target >= {SPEEDUP_TARGET}x on machines with >= {CORES_FOR_TARGET} cores)"
        )
        for check, ratio in zip(result.checks, (produce, pop), strict=True):
            if cpu_count() >= CORES_FOR_TARGET:
                check.judge(ratio >= SPEEDUP_TARGET, f"{ratio:.2f}x")
            else:
                check.measured = f"{ratio:.2f}x"
                check.note = f"not judged: {cpu_count()} cores (needs {CORES_FOR_TARGET})"
