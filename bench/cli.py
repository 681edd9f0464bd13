"""``python -m bench``: options, running the chosen scenarios, cleaning up, the summary."""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.bodies import BodiesScenario
from bench.cluster import ClusterScenario
from bench.consumers import RouteMissing
from bench.fsync import FsyncScenario
from bench.leased import LeasedScenario
from bench.leases import LeasesScenario
from bench.report import ERROR, SKIPPED, ScenarioResult, heading, summary
from bench.rest import RestScenario
from bench.scenario import Context, Scenario, cpu_count
from bench.semantics import SemanticsScenario
from bench.servers import stop_all
from bench.shutdown import ShutdownScenario
from bench.streaming import FanoutScenario, IdleMemoryScenario, LatencyScenario
from bench.workers import WorkersScenario

SCENARIOS: dict[str, type[Scenario]] = {
    "rest": RestScenario,
    "latency": LatencyScenario,
    "fanout": FanoutScenario,
    "memory": IdleMemoryScenario,
    "bodies": BodiesScenario,
    "shutdown": ShutdownScenario,
    "leased": LeasedScenario,
    "leases": LeasesScenario,
    "workers": WorkersScenario,
    "cluster": ClusterScenario,
    "semantics": SemanticsScenario,
    "fsync": FsyncScenario,
}
ALIASES = {"all": list(SCENARIOS), "streaming": ["latency", "fanout", "memory"]}

DESCRIPTION = """\
RestMQ benchmark: starts its own servers on loopback (a `twistd restmq` broker on a
fresh embedded Valkey, and a bare cyclone handler as the baseline), drives them with
a Python load generator (asyncio, HTTP/1.1 keep-alive, raw sockets; WebSocket via the
`websockets` package) and prints a table per scenario and a summary against the
targets of the REST and streaming routes. It is a report: the exit status is 0 even when a target
is MISSED (1 only if the benchmark itself could not run, 130 on Ctrl-C).

scenarios (--only):
  rest     POST /q/<q> and GET /q/<q> req/s and p50/p99 latency: stock cyclone,
           a bare cyclone handler on our connection class (target >= 0.9x stock)
           and the broker (target >= 0.7x stock); batches of 100 messages (POST
           "values", GET ?n=100) in msg/s (target >= 40x the single-message
           req/s); Redis round trips per request (target: exactly 1)
  latency  publish -> delivery latency p50/p99 with --sse-consumers SSE
           consumers at --rate msg/s (targets p50 <= 5 ms, p99 <= 50 ms)
  fanout   messages delivered per second to --fanout consumers, over
           --fanout-transports (SSE and WebSocket)
  memory   broker RSS growth with --idle-consumers idle streaming
           consumers (target <= 50 MB); valkey RSS shown apart
  bodies   broker RSS before, at the peak of, and after --big-posts concurrent POSTs
           of 8 MB (the memory budget, --max-buffered, at its default)
  shutdown acknowledged messages lost when the broker is stopped under load:
           --stop-trials SIGTERM and as many SIGKILL trials, --stop-consumers SSE
           consumers (target: 0 lost on SIGTERM; SIGKILL reported)
  leased   messages acked per second by --leased-consumers leased WebSocket
           consumers acking with frames, then as many leased SSE consumers
           acking with DELETE /q/<q>?receipt=R, each with --prefetch
  leases   consumed msg/s with --lease-consumers consumers: plain pops, leased take +
           ack (target >= 0.45x plain), n=10 + one ack (target >= 2x plain), in
           --lease-rounds interleaved rounds, judged on steady rates (90th percentile
           of each kind's half-second slices);
           long-poll wake-up p50/p99 next to SSE delivery (target: p50 <= 1.5x SSE p50)
  workers  produce and pop req/s of a broker run with --workers 1 and with
           --workers N (default: one per core, at least 2), CPU% of every
           process (target >= 1.5x, judged only on machines with >= 4 cores)
  cluster  RestMQ on a local Valkey Cluster of 3 primaries with a replica each:
           produce and pop req/s of one broker on it vs on one standalone
           valkey-server, spread over 10 queues (target >= 0.85x standalone);
           each primary's CPU seconds per 10,000 messages under load on
           --cluster-queues queues from a broker with --cluster-workers
           processes (target: each within 35% of the mean); seconds from a
           SIGKILL of a queue's primary to its next POST answered 200 (target
           <= 10 s), and whether a queue on another shard kept answering 200
  semantics req/s of adds with a fresh Idempotency-Key each (target >= 0.85x plain
           add) and of delayed adds, delay=60 (target >= 0.85x plain add); messages
           stored/s by adds to a queue with 3 subscriptions over plain add's (no
           target); the kinds in --semantics-rounds interleaved rounds, one broker;
           delay precision: --delay-samples messages due over 2-5 s, one SSE
           consumer, p50/p99/max of delivery - due time (target: p99 <= 1.5 s)
  fsync    add (POST /q/<q>) req/s and p50/p99 latency of brokers started with
           --fsync always, everysec and no, 4 keep-alive connections, 3 interleaved
           rounds; ratios against everysec (the default); the disk's fsync time (no target)
  streaming = latency,fanout,memory; all (default) = every scenario
Streaming scenarios are skipped with a note while the broker answers 404 on
their route (GET /c/<q>, /ws/<q>).
With the defaults the whole run takes about 9.5 minutes (shutdown: about 70 s,
cluster: about 90 s, semantics: about 55 s, workers: about 50 s, fsync: about 45 s,
leased: about 20 s).
"""


def _names(text: str) -> list[str]:
    names: list[str] = []
    for word in text.replace(" ", ",").split(","):
        if not word:
            continue
        if word in ALIASES:
            names.extend(ALIASES[word])
        elif word in SCENARIOS:
            names.append(word)
        else:
            choices = ", ".join([*SCENARIOS, *ALIASES])
            raise argparse.ArgumentTypeError(f"unknown scenario {word!r} (choose from {choices})")
    return names


def _int_list(text: str) -> list[int]:
    try:
        values = [int(word) for word in text.split(",") if word]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,10,100, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers like 1,10,100")
    return values


def _transports(text: str) -> list[str]:
    kinds = [word for word in text.split(",") if word]
    unknown = set(kinds) - {"sse", "comet", "ws"}
    if unknown or not kinds:
        raise argparse.ArgumentTypeError("transports are sse, comet and ws (comma-separated)")
    return kinds


def positive(kind):
    """An argparse type: a number of ``kind`` greater than 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--only", type=_names, action="extend", metavar="NAMES",
        help="scenarios to run, comma-separated (rest, latency, fanout, memory, bodies, "
             "shutdown, leased, leases, workers, cluster, semantics, fsync, streaming, all); "
             "default: all")  # fmt: skip
    add("--duration", type=positive(float), default=8.0, metavar="S",
        help="measured seconds of each run (default 8)")  # fmt: skip
    add("--warmup", type=positive(float), default=1.0, metavar="S",
        help="unmeasured seconds before each run (default 1)")  # fmt: skip
    add("--connections", type=positive(int), default=16, metavar="N",
        help="keep-alive connections of the rest runs (default 16)")  # fmt: skip
    add("--client-procs", type=positive(int), default=1, metavar="N",
        help="load-generator processes for the rest runs (default 1: on 2 cores the servers "
             "need the other one)")  # fmt: skip
    add("--repeat", type=positive(int), default=1, metavar="N",
        help="rest: measure each run N times (one after the other) and keep the fastest; "
             "on a shared machine 2 or 3 make the ratios steadier (default 1)")  # fmt: skip
    add("--value-size", type=positive(int), default=100, metavar="BYTES",
        help="size of each message value (default 100)")  # fmt: skip
    add("--round-trip-sample", type=positive(int), default=100, metavar="N",
        help="requests watched with MONITOR to count Redis round trips (default 100)")  # fmt: skip
    add("--rate", type=positive(float), default=1000.0, metavar="MSG/S",
        help="publish rate of the latency scenario (default 1000)")  # fmt: skip
    add("--sse-consumers", type=positive(int), default=10, metavar="N",
        help="SSE consumers of the latency scenario (default 10)")  # fmt: skip
    add("--fanout", type=_int_list, default=[1, 10, 100], metavar="N,N,..",
        help="consumer counts of the fan-out scenario (default 1,10,100)")  # fmt: skip
    add("--fanout-transports", type=_transports, default=["sse", "ws"], metavar="T,T",
        help="transports of the fan-out scenario: sse, comet, ws (default sse,ws)")  # fmt: skip
    add("--idle-consumers", type=positive(int), default=1000, metavar="N",
        help="idle streaming consumers of the memory scenario (default 1000)")  # fmt: skip
    add("--idle-transports", type=_transports, default=["sse", "comet", "ws"], metavar="T,T",
        help="transports the idle consumers are spread over (default sse,comet,ws)")  # fmt: skip
    add("--big-posts", type=positive(int), default=40, metavar="N",
        help="concurrent 8 MB POSTs of the bodies scenario (default 40)")  # fmt: skip
    add("--stop-trials", type=positive(int), default=5, metavar="N",
        help="SIGTERM trials of the shutdown scenario, as many SIGKILL (default 5)")  # fmt: skip
    add("--stop-consumers", type=positive(int), default=10, metavar="N",
        help="SSE consumers of the shutdown scenario (default 10)")  # fmt: skip
    add("--leased-consumers", type=positive(int), default=10, metavar="N",
        help="leased consumers per transport of the leased scenario (default 10)")  # fmt: skip
    add("--prefetch", type=positive(int), default=10, metavar="N",
        help="prefetch window of each leased consumer (default 10)")  # fmt: skip
    add("--lease-consumers", type=positive(int), default=50, metavar="N",
        help="concurrent consumers of the leases scenario (default 50)")  # fmt: skip
    add("--lease-rounds", type=positive(int), default=4, metavar="N",
        help="leases: rounds of plain, leased and batch runs, one after the other, each run "
             "lasting --duration/N; each kind's runs are taken together (default 4)")  # fmt: skip
    add("--wake-up-samples", type=positive(int), default=200, metavar="N",
        help="long-poll and SSE deliveries timed by the leases scenario (default 200)")  # fmt: skip
    add("--workers", type=positive(int), default=max(2, cpu_count()), metavar="N",
        help="broker processes of the workers scenario, compared with 1 (default: one per "
             "core, at least 2)")  # fmt: skip
    add("--cluster-queues", type=positive(int), default=100, metavar="N",
        help="cluster: queues the load is spread over to compare the shards "
             "(default 100)")  # fmt: skip
    add("--cluster-workers", type=positive(int), default=2, metavar="N",
        help="cluster: broker processes (--workers) loading the shards (default 2)")  # fmt: skip
    add("--semantics-rounds", type=positive(int), default=3, metavar="N",
        help="semantics: rounds of a plain, an idempotent, a delayed and a fan-out add run, "
             "each run lasting --duration/N; each kind's runs are taken together "
             "(default 3)")  # fmt: skip
    add("--delay-samples", type=positive(int), default=1000, metavar="N",
        help="semantics: delayed messages whose delivery is timed against their due time "
             "(default 1000)")  # fmt: skip
    add("--keep-workdir", action="store_true",
        help="keep the temporary work dir (server logs, data dirs), do not remove it")  # fmt: skip
    return p


def _raise_fd_limit() -> None:
    """A thousand consumers need a thousand sockets, here and in the broker (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _terminate(signum, frame) -> None:
    # Handled like Ctrl-C, which asyncio.run turns into a clean cancel of the running load.
    signal.raise_signal(signal.SIGINT)


def run_scenario(ctx: Context, scenario: Scenario) -> ScenarioResult:
    result = ScenarioResult(scenario.name, checks=scenario.planned_checks(ctx.options))
    ctx.out(heading(scenario.title))
    started = time.monotonic()
    try:
        scenario.run(ctx, result)
    except RouteMissing as exc:
        result.skipped = f"streaming route not available yet ({exc})"
        ctx.out(f"  SKIPPED: {result.skipped}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        ctx.out(f"  ERROR: the {scenario.name} scenario could not run:")
        ctx.out("  " + traceback.format_exc().replace("\n", "\n  ").rstrip())
        for check in result.checks:
            if check.status == SKIPPED:
                check.status = ERROR
    finally:
        stop_all()
    for check in result.checks:
        if check.status == SKIPPED and result.skipped and not check.note:
            check.note = result.skipped
    ctx.out(f"  ({time.monotonic() - started:.0f} s)")
    return result


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    names = list(dict.fromkeys(options.only or ALIASES["all"]))
    _raise_fd_limit()
    # Ctrl-C must stop the run and its servers, even when started with SIGINT ignored
    # (a background job of a script); SIGTERM does the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="rmqbench-"))
    ctx = Context(options, root)
    ctx.out(
        f"RestMQ benchmark: scenarios {', '.join(names)}; {cpu_count()} cores; "
        f"work dir {root} ({'kept' if options.keep_workdir else 'removed at the end'})"
    )
    results: list[ScenarioResult] = []
    started = time.monotonic()
    try:
        for name in names:
            results.append(run_scenario(ctx, SCENARIOS[name]()))
    except KeyboardInterrupt:
        ctx.out("\ninterrupted: stopping the servers")
        return 130
    finally:
        stop_all()
        if not options.keep_workdir:
            shutil.rmtree(root, ignore_errors=True)
    ctx.out(summary(results))
    ctx.out(f"  total time {time.monotonic() - started:.0f} s")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
