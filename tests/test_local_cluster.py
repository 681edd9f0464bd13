"""The local Valkey Cluster tool: it forms a whole cluster, and never leaves a server
running, whether stopped from Python, by Ctrl-C or SIGTERM, or when its process is killed.

Real valkey-server processes on loopback; the cluster's state is read with the tests'
own RESP client, not the tool's.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from restmq.runtime.local_cluster import ClusterError, LocalCluster
from tests.support import ROOT, free_cluster_base, pid_alive, redis_command, wait_for


def command(port: int, *args):
    return redis_command(("127.0.0.1", port), *args)


def fields(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_cluster_forms_three_primaries_each_with_a_replica_serving_every_slot(
    valkey_cluster,
):
    ports = {node.port for node in valkey_cluster.nodes}
    assert len(ports) == 6
    for port in ports:
        info = command(port, "CLUSTER", "INFO")
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:16384" in info
        assert "cluster_known_nodes:6" in info
        assert "cluster_size:3" in info
    shards = [fields(shard) for shard in command(min(ports), "CLUSTER", "SHARDS")]
    assert len(shards) == 3
    served = []
    for shard in shards:
        nodes = [fields(node) for node in shard["nodes"]]
        assert sorted(node["role"] for node in nodes) == ["master", "replica"]
        assert {node["health"] for node in nodes} == {"online"}
        assert {node["port"] for node in nodes} <= ports
        bounds = shard["slots"]
        for first, last in zip(bounds[::2], bounds[1::2], strict=True):
            served += range(first, last + 1)
    assert sorted(served) == list(range(16384))
    for replica in valkey_cluster.replicas:
        replication = command(replica.port, "INFO", "replication")
        assert "role:slave" in replication
        assert "master_link_status:up" in replication
        primary = valkey_cluster.primaries[replica.shard]
        assert f"master_port:{primary.port}" in replication
    assert [node.live_role() for node in valkey_cluster.nodes] == [
        "primary", "primary", "primary", "replica", "replica", "replica",
    ]  # fmt: skip


def test_stop_leaves_no_server_running(tmp_path):
    cluster = LocalCluster(tmp_path, base_port=free_cluster_base(4), primaries=2, replicas=1)
    cluster.start()
    pids = [node.pid for node in cluster.nodes]
    assert all(pid_alive(pid) for pid in pids)
    cluster.stop()
    assert not any(pid_alive(pid) for pid in pids)
    assert all(refuses_connections(node.port) for node in cluster.nodes)
    assert all((node.directory / "appendonlydir").is_dir() for node in cluster.nodes)


def test_a_base_port_whose_bus_ports_would_pass_65535_is_refused(tmp_path):
    LocalCluster(tmp_path, base_port=55530, primaries=3, replicas=1)  # the highest that fits
    with pytest.raises(ClusterError) as refused:
        LocalCluster(tmp_path, base_port=55531, primaries=3, replicas=1)
    assert "pick a base port from 1 to 55530" in str(refused.value)
    assert "cluster bus" in str(refused.value)


def test_a_taken_bus_port_is_refused_before_any_server_starts(tmp_path):
    base = free_cluster_base(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 10001))
        taken.listen()
        cluster = LocalCluster(tmp_path, base_port=base, primaries=3, replicas=0)
        with pytest.raises(ClusterError) as refused:
            cluster.start()
    assert f"port {base + 10001} on 127.0.0.1 is taken" in str(refused.value)
    assert all(node.proc is None for node in cluster.nodes)


def test_a_directory_that_holds_a_cluster_already_is_refused(tmp_path):
    LocalCluster(tmp_path, base_port=free_cluster_base(1), primaries=1, replicas=0).start().stop()
    again = LocalCluster(tmp_path, base_port=free_cluster_base(1), primaries=1, replicas=0)
    with pytest.raises(ClusterError, match="already holds a cluster node"):
        again.start()
    assert again.nodes[0].proc is None


def start_command_line(tmp_path, primaries: int = 3) -> tuple[subprocess.Popen, list[str], dict]:
    """The tool run as a person runs it; its process, output lines until the seeds, and
    the pid of each node it printed."""
    base = free_cluster_base(primaries)
    tool = subprocess.Popen(
        [
            sys.executable, "-m", "restmq.runtime.local_cluster", "--base-port", str(base),
            "--primaries", str(primaries), "--replicas", "0", "--dir", str(tmp_path / "nodes"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines = []
    while not lines or not lines[-1].startswith("Ctrl-C"):
        line = tool.stdout.readline()
        assert line, f"the tool ended before forming the cluster: {lines}"
        lines.append(line.rstrip("\n"))
    pids = {}
    for line in lines:
        if " pid " in line:
            address, _, pid, _ = line.split()
            pids[address] = int(pid)
    return tool, lines, pids


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_command_line_prints_the_seeds_and_stops_every_node_on_a_signal(tmp_path, signum):
    tool, lines, pids = start_command_line(tmp_path)
    seeds = next(line for line in lines if line.startswith("seeds: ")).removeprefix("seeds: ")
    assert seeds.split(",") == list(pids)
    for address in pids:
        assert "cluster_state:ok" in command(int(address.rsplit(":")[1]), "CLUSTER", "INFO")
    tool.send_signal(signum)
    output = tool.communicate(timeout=20)[0]
    assert tool.returncode == 0, output
    assert "stopping every node" in output
    assert not any(pid_alive(pid) for pid in pids.values())


def test_nodes_stop_when_the_tool_is_killed(tmp_path):
    tool, _, pids = start_command_line(tmp_path, primaries=1)
    tool.kill()
    tool.wait(10)
    wait_for(
        lambda: not any(pid_alive(pid) for pid in pids.values()),
        10,
        what="the nodes to stop after the tool died",
    )
