"""A broker on a local Valkey Cluster, in one command (``make run-cluster``).

``python -m restmq.runtime.run_cluster [--base-port 7000] [--primaries 3] [--replicas 1]
[-- BROKER OPTIONS]`` forms a Valkey Cluster on this machine with
``restmq.runtime.local_cluster.LocalCluster`` (its data in a temporary directory, deleted
when it stops), then runs ``twistd --nodaemon restmq --redis-cluster=<seeds>`` on it
with the broker options given after ``--``, and prints where everything is.

Ctrl-C, SIGTERM or SIGHUP stops the broker first (so that it stops as it does on its own:
streams closed, nothing acknowledged lost), then every node of the cluster. The broker and
the nodes leave the terminal's process group, so a Ctrl-C reaches this process alone and
the order holds; they are tied to this process (``restmq.runtime.valkey_launcher``), so
they die with it even when it is SIGKILLed. When the broker exits by itself (bad options,
say) the cluster is stopped and its exit status is this command's.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.python import usage

from restmq.runtime.local_cluster import ClusterError, LocalCluster
from restmq.runtime.options import Options

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BROKER_STOP_TIMEOUT = 30.0  # seconds the broker has to stop before it is SIGKILLed


class _Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _say(text: str) -> None:
    print(f"run-cluster: {text}", flush=True)


def broker_url(broker_args: list[str]) -> str:
    """Where the broker these options describe answers; UsageError if they are wrong."""
    options = Options()
    options.parseOptions([*broker_args, "--redis-cluster=127.0.0.1:1"])
    scheme = "https" if options["tls-cert"] else "http"
    host = options["listen"]
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{options['port']}/"


def broker_command(seeds: list[str], broker_args: list[str]) -> list[str]:
    """``twistd --nodaemon restmq --redis-cluster=<seeds> ...``, started through the
    launcher: it leaves the terminal's process group and dies with this process."""
    twistd = str(Path(sys.executable).with_name("twistd"))
    launcher = [sys.executable, "-m", "restmq.runtime.valkey_launcher"]
    return [
        *launcher,
        twistd,
        "--nodaemon",
        "--pidfile=",
        "restmq",
        f"--redis-cluster={','.join(seeds)}",
        *broker_args,
    ]


def stop_broker(broker: subprocess.Popen, timeout: float = BROKER_STOP_TIMEOUT) -> int:
    """SIGTERM the broker, SIGKILL it if it has not exited ``timeout`` seconds later."""
    if broker.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            broker.terminate()
    try:
        return broker.wait(timeout)
    except subprocess.TimeoutExpired:
        _say(f"the broker did not stop within {timeout:g} s: killing it")
        broker.kill()
        return broker.wait()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m restmq.runtime.run_cluster",
        description="Form a local Valkey Cluster and run a RestMQ broker on it; Ctrl-C "
        "(or SIGTERM) stops the broker, then the cluster. Broker options go after '--'.",
    )
    parser.add_argument("--base-port", type=int, default=7000, help="first node's port")
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary")
    parser.add_argument("broker_args", nargs="*", metavar="-- BROKER OPTIONS")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    try:
        url = broker_url(options.broker_args)
    except usage.UsageError as exc:
        print(f"run-cluster: broker options: {exc}", file=sys.stderr, flush=True)
        return 2
    for number in STOP_SIGNALS:
        signal.signal(number, _raise_stop)
    directory = tempfile.mkdtemp(prefix="restmq-cluster-")
    cluster: LocalCluster | None = None
    broker: subprocess.Popen | None = None
    try:
        cluster = LocalCluster(
            directory,
            base_port=options.base_port,
            primaries=options.primaries,
            replicas=options.replicas,
        )
        _say(f"forming a Valkey Cluster in {directory} (deleted when it stops)")
        cluster.start()
        for node in cluster.nodes:
            _say(f"  {node.address}  pid {node.pid}  {node.role}")
        command = broker_command(cluster.seeds, options.broker_args)
        broker = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        _say(f"broker pid {broker.pid}: {' '.join(command[3:])}")
        _say(f"RestMQ answers at {url} once the broker says it listens; Ctrl-C stops all")
        status = broker.wait()
        _say(f"the broker exited with status {status}; stopping the cluster")
        return 128 - status if status < 0 else status  # killed by a signal: as a shell says
    except ClusterError as exc:
        print(f"run-cluster: {exc}", file=sys.stderr, flush=True)
        return 1
    except (_Stop, KeyboardInterrupt):
        _say("stopping the broker, then the cluster")
        return 0
    finally:
        # no second signal may cut the stop short and leave processes running
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        if broker is not None:
            stop_broker(broker)
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
        _say("stopped")


if __name__ == "__main__":
    sys.exit(main())
