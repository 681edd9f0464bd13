"""`make run-cluster`: one command forms a local Valkey Cluster, runs a broker on it, and
stops both (the broker first) on Ctrl-C or SIGTERM, leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, default_sigint, free_cluster_base, free_port, pid_alive, wait_for

NODES = 6  # make run-cluster's cluster: 3 primaries, 3 replicas
# Variables of the make (or uv) that may have started the tests: not for this make.
_INHERITED = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV"}


def start_make(log_path: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            ["make", "--no-print-directory", "run-cluster", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as at a terminal
            preexec_fn=default_sigint,
        )


def http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, data, method=method), timeout=5) as r:
        return r.status, r.read()


def family(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    root = psutil.Process(pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


def is_valkey(pid: int) -> bool:
    try:
        return "valkey-server" in psutil.Process(pid).name()
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_make_run_cluster_serves_on_a_cluster_and_stops_everything(tmp_path, stop):
    port, base = free_port(), free_cluster_base(NODES)
    log_path = tmp_path / "run-cluster.log"
    proc = start_make(log_path, f"CLUSTER_BASE_PORT={base}", f"ARGS=--port {port}")
    url = f"http://127.0.0.1:{port}"
    try:

        def serving() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"make run-cluster exited {proc.returncode}:\n" + log())
            try:
                return http("GET", f"{url}/stats/")[0] == 200
            except OSError:
                return False

        def log() -> str:
            return log_path.read_text()

        wait_for(serving, timeout=90, what=f"make run-cluster to serve on port {port}")
        status, body = http("POST", f"{url}/q/orders", b"value=book")
        assert (status, body.strip()) == (200, b"{orders}:1")  # the cluster's message keys
        status, body = http("GET", f"{url}/q/orders")
        assert status == 200
        assert json.loads(body) == {"key": "{orders}:1", "value": "book", "count": 0}

        shown = log()
        seeds = ",".join(f"127.0.0.1:{base + i}" for i in range(NODES))
        assert f"--redis-cluster={seeds} --port {port}" in shown, shown
        directory = Path(re.search(r"forming a Valkey Cluster in (\S+)", shown).group(1))
        assert directory.is_dir()
        processes = family(proc.pid)
        nodes = [pid for pid in processes if is_valkey(pid)]
        assert len(nodes) == NODES, shown
        for node in nodes:
            assert f"pid {node} " in shown, f"node {node} not listed:\n{shown}"

        if stop == "Ctrl-C":  # at a terminal: SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # as a service manager would: SIGTERM to make alone
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)  # make itself dies of the signal, once its command has exited
        wait_for(
            lambda: not any(pid_alive(pid) for pid in processes),
            timeout=15,
            what="every process of make run-cluster to exit",
        )
        shown = log()
        # the broker stopped cleanly (it could still reach the cluster), then the cluster
        assert "RestMQ stopped" in shown, shown
        assert shown.index("RestMQ stopped") < shown.index("run-cluster: stopped"), shown
        assert "Traceback" not in shown, shown
        assert not directory.exists(), "the cluster's temporary directory was left behind"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_wrong_broker_options_are_refused_before_anything_starts(tmp_path):
    log_path = tmp_path / "run-cluster.log"
    proc = start_make(log_path, f"CLUSTER_BASE_PORT={free_cluster_base(NODES)}", "ARGS=--prot 1")
    assert proc.wait(60) != 0
    shown = log_path.read_text()
    assert "broker options: option --prot not recognized" in shown, shown
    assert "forming" not in shown, shown
