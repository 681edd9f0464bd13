"""The servers a benchmark runs against, as child processes it starts and always stops.

- ``BrokerServer``: ``twistd -n --pidfile= restmq`` on the embedded Valkey, with a
  fresh data directory in a temporary work dir.
- ``BaselineServer``: ``python -m bench.baseline``, the bare cyclone handler
  (``stock=True``: on cyclone as shipped, without our connection class).
- ``ValkeyServer``: a standalone ``valkey-server`` (the embedded package's) on a TCP
  port, for a broker started with ``--redis-host/--redis-port``.

Both listen on loopback only. Each runs in its own session so that a Ctrl-C meant
for the benchmark does not hit them half-way: ``stop_all()`` stops them in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_started: list[ServerProcess] = []


class ServerError(RuntimeError):
    """A server did not start; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time all cores of the machine have spent busy (not idle), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # guest time is already inside user time
    return busy / _CLOCK_TICKS


def rss_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of a process from /proc/<pid>/status, in bytes: its RSS, or with
    ``field="VmHWM"`` its peak RSS; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _http_ok(port: int, path: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status = sock.recv(64).split(b" ", 2)
    except OSError:
        return False
    return len(status) > 1 and status[0].startswith(b"HTTP/") and status[1].startswith(b"2")


class ServerProcess:
    """A server child process with its log file."""

    name = "server"
    ready_path = "/"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _started.append(self)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self.name} did not answer within {timeout} s\n{self.tail()}")
            time.sleep(0.05)
        return self

    def ready(self) -> bool:
        """True once the server answers."""
        return _http_ok(self.port, self.ready_path)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def children(self) -> list[int]:
        """Processes this server started and that must go with it."""
        return []

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        leftovers = self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        deadline = time.monotonic() + 10
        for pid in leftovers:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self in _started:
            _started.remove(self)


class BrokerServer(ServerProcess):
    """A real broker: ``twistd -n --pidfile= restmq`` on a fresh embedded Valkey."""

    name = "broker"
    ready_path = "/stats/"

    def __init__(self, workdir: Path, extra_args: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.extra_args = extra_args or []

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def valkey_socket(self) -> Path:
        return self.data_dir / "valkey.sock"

    def command(self) -> list[str]:
        return [
            str(BIN / "twistd"), "-n", "--pidfile=", "restmq",
            "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip

    def valkey_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "valkey.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def children(self) -> list[int]:
        pid = self.valkey_pid()
        return [pid] if pid else []


class BaselineServer(ServerProcess):
    """The bare cyclone handler (``bench.baseline``) in its own process."""

    name = "baseline"
    ready_path = "/q/ready"

    def __init__(self, workdir: Path, value_size: int, stock: bool = False) -> None:
        super().__init__(workdir)
        self.value_size = value_size
        self.stock = stock

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "bench.baseline",
            "--port", str(self.port), "--value-size", str(self.value_size),
            *(["--stock"] if self.stock else []),
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> ServerProcess:
        # the child must import ``bench`` from this checkout, whatever its cwd
        root = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        try:
            return super().start(timeout)
        finally:
            if path is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = path


class ValkeyServer(ServerProcess):
    """A standalone valkey-server on loopback TCP, configured as the embedded one is
    (append-only file, fsync every second, no snapshots)."""

    name = "valkey"

    def command(self) -> list[str]:
        from restmq.runtime.embedded_valkey import valkey_binary

        return [
            valkey_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def stop_all() -> None:
    """Stop every server still running, newest first."""
    for server in reversed(list(_started)):
        with contextlib.suppress(Exception):
            server.stop()


class CpuSampler:
    """CPU use of some processes over a window, read from /proc at its start and end.

    ``arm(start, end)`` samples from a thread at those monotonic times, so it works
    while an asyncio load runs in the main thread; ``finish()`` ends the window early
    (a run that ran out of requests) or waits for its end. The name ``machine`` is
    the busy time of all cores, to tell how much else ran meanwhile.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self._start: dict[str, float | None] = {}
        self._end: dict[str, float | None] = {}
        self._times = [0.0, 0.0]
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> dict[str, float | None]:
        sample = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sample["machine"] = machine_busy_seconds()
        return sample

    def arm(self, start: float, end: float) -> None:
        def run() -> None:
            if self._done.wait(max(0.0, start - time.monotonic())):
                return  # the load ended before its window began
            self._times[0], self._start = time.monotonic(), self._sample()
            self._done.wait(max(0.0, end - time.monotonic()))
            self._times[1], self._end = time.monotonic(), self._sample()

        self._thread = threading.Thread(target=run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def percent(self, name: str) -> float | None:
        start, end = self._start.get(name), self._end.get(name)
        elapsed = self._times[1] - self._times[0]
        if start is None or end is None or elapsed <= 0:
            return None
        return 100.0 * (end - start) / elapsed

    def others(self, *ours: float | None) -> float | None:
        """CPU % (of one core) used by processes other than ``ours`` during the window."""
        machine = self.percent("machine")
        if machine is None:
            return None
        return max(0.0, machine - sum(x for x in ours if x is not None))
