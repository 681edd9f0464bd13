"""``--workers N``: one listening socket served by N broker processes.

The main process opens the port (and owns the embedded Valkey, if any), then
starts N-1 workers: each is ``twistd restmq`` again, with the broker's own
arguments, the listening socket's descriptor (``--worker-fd``) and, with an
embedded Valkey, the main process's storage socket (``--redis-socket``), so a
worker never starts a Valkey of its own. Every process accepts on the same
socket; the kernel hands each new connection to one of them. All of them share
the one Redis, which is where queues, leases and consumer counts live.

The main process relays the workers' log lines, restarts a worker that dies
(waiting longer each time it keeps dying) and, when it stops, stops them with
SIGTERM (each does the broker's loss-free stop) before its Valkey. A worker
gets SIGTERM from Linux when the main process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Callable

from twisted.internet import defer, protocol, tcp
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from restmq.runtime.lifeline import PARENT_PID_VARIABLE, die_with_parent

log = Logger(namespace="restmq.workers")

STOP_TIMEOUT = 20.0  # seconds a worker has for its loss-free stop before SIGKILL

# twistd starts each log line with a timestamp; the main process's own log adds one.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")
_RUN_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def worker_command(arguments: list[str], fd: int, storage_socket: str | None) -> list[str]:
    """The command line of a worker: twistd restmq with the broker's own arguments."""
    command = [sys.executable, "-c", _RUN_TWISTD, "--nodaemon", "--pidfile=", "restmq"]
    command += [*arguments, "--worker-fd", str(fd)]
    if storage_socket is not None:
        command += ["--redis-socket", storage_socket]
    return command


# -- in a worker -------------------------------------------------------------------------


def become_worker() -> None:
    """Die with the main process; leave its process group, so that a Ctrl-C meant for
    the main process does not reach the workers: it stops them itself, in order."""
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)
    if parent is not None:
        die_with_parent(int(parent), signal.SIGTERM)
    os.setpgid(0, 0)


class SharedPort(tcp.Port):
    """A listening port that several processes accept on, sharing new connections.

    The kernel wakes every process when a connection comes; the first to call
    accept() gets it. Twisted would take up to a hundred queued connections per
    wake-up, so one process could take a whole burst (a client's keep-alive pool,
    say) while the others idle. Here a process takes one connection per turn and
    then waits a moment that grows with the connections it already serves, which
    leaves the next ones to less busy processes.
    """

    # Closing must not shut the socket down: that would stop it listening in every
    # process. Twisted already leaves adopted sockets alone; the main process's too.
    _shouldShutdown = False

    pause_per_connection = 0.0001  # seconds
    longest_pause = 0.001
    serving: Callable[[], int] = staticmethod(lambda: 0)  # connections open here
    _resume = None

    def doRead(self) -> None:
        self.numberAccepts = 1
        super().doRead()
        pause = min(self.longest_pause, self.pause_per_connection * self.serving())
        if pause > 0 and self.connected and not self.disconnecting:
            self.stopReading()
            self._resume = self.reactor.callLater(pause, self._accept_again)

    def _accept_again(self) -> None:
        self._resume = None
        if self.connected and not self.disconnecting:
            self.startReading()

    def connectionLost(self, reason) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        super().connectionLost(reason)


def _with_tls(factory, tls):
    # What listenSSL does: TLS is a protocol wrapper over each TCP connection.
    return factory if tls is None else TLSMemoryBIOFactory(tls, False, factory)


def listen_shared(
    reactor, port: int, interface: str, factory, tls=None, serving: Callable[[], int] | None = None
) -> IListeningPort:
    """Open the port that the workers will adopt (in the main process).

    ``serving()`` tells how many connections this process has open.
    """
    listening = SharedPort(port, _with_tls(factory, tls), interface=interface, reactor=reactor)
    if serving is not None:
        listening.serving = serving
    listening.startListening()
    return listening


def adopt_port(
    reactor, fd: int, interface: str, factory, tls=None, serving: Callable[[], int] | None = None
) -> IListeningPort:
    """Accept connections on the main process's listening socket ``fd`` (in a worker).

    What ``reactor.adoptStreamPort`` does, with a SharedPort; with TLS the TCP socket
    is adopted and each connection wrapped here.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    port = SharedPort._fromListeningDescriptor(reactor, fd, family, _with_tls(factory, tls))
    if serving is not None:
        port.serving = serving
    port.startListening()
    os.close(fd)  # the port listens on a duplicate of it
    return port


# -- in the main process -----------------------------------------------------------------


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.pid: int | None = None
        self.ended = defer.Deferred()
        self._partial = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._relay(line)

    errReceived = outReceived

    def _relay(self, raw: bytes) -> None:
        text = _TIMESTAMP.sub("", raw.decode("utf-8", "replace").rstrip())
        if text:
            log.info("worker {pid}: {line}", pid=self.pid, line=text)

    def processEnded(self, reason) -> None:
        if self._partial:
            self._relay(self._partial)
            self._partial = b""
        self.pool._ended(self, reason.value)
        self.ended.callback(None)


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes of ``--workers``."""

    restart_backoff = (0.5, 1.0, 2.0, 5.0, 10.0)
    stable_after = 30.0  # seconds up before a worker's backoff starts over

    def __init__(
        self,
        reactor,
        count: int,
        command: Callable[[], list[str]],
        fd: int,
        directory: str,
    ) -> None:
        self.reactor = reactor
        self.count = count  # workers, the main process not included
        self.command = command
        self.fd = fd
        self.directory = directory
        self.stopping = False
        self._running: dict[int, _Worker] = {}  # by slot
        self._started_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, object] = {}

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self._running.values() if worker.pid]

    def start(self) -> None:
        for slot in range(1, self.count + 1):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        if self.stopping:
            return
        worker = _Worker(self, slot)
        env = dict(os.environ, **{PARENT_PID_VARIABLE: str(os.getpid())})
        command = self.command()
        self.reactor.spawnProcess(
            worker,
            command[0],
            command,
            env=env,
            path=self.directory,
            childFDs={0: "w", 1: "r", 2: "r", self.fd: self.fd},
        )
        self._running[slot] = worker
        self._started_at[slot] = self.reactor.seconds()
        log.info("started worker {slot} (pid {pid})", slot=slot, pid=worker.pid)

    def _ended(self, worker: _Worker, status) -> None:
        if self._running.get(worker.slot) is worker:
            del self._running[worker.slot]
        if self.stopping:
            return
        slot = worker.slot
        if self.reactor.seconds() - self._started_at.get(slot, 0.0) >= self.stable_after:
            self._failures[slot] = 0
        failures = self._failures.get(slot, 0)
        self._failures[slot] = failures + 1
        delay = self.restart_backoff[min(failures, len(self.restart_backoff) - 1)]
        code = getattr(status, "exitCode", None)
        sig = getattr(status, "signal", None)
        how = f"signal {sig}" if sig else f"exit status {code}"
        log.warn(
            "worker {slot} (pid {pid}) ended ({how}); starting it again in {delay} s",
            slot=slot,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self._restarts[slot] = self.reactor.callLater(delay, self._spawn, slot)

    def stop(self, timeout: float = STOP_TIMEOUT) -> defer.Deferred:
        """SIGTERM every worker; fires once all have exited (SIGKILL after ``timeout``)."""
        self.stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self._running.values())
        for worker in workers:
            self._signal(worker, "TERM")
        if workers:
            log.info("stopping {n} worker(s)", n=len(workers))
        done = defer.DeferredList([worker.ended for worker in workers])
        killer = self.reactor.callLater(timeout, self._kill, workers)

        def stopped(result):
            if killer.active():
                killer.cancel()
            return None

        return done.addBoth(stopped)

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("worker {pid} did not stop in time; killing it", pid=worker.pid)
                self._signal(worker, "KILL")

    @staticmethod
    def _signal(worker: _Worker, name: str) -> None:
        with contextlib.suppress(ProcessExitedAlready):  # it ended meanwhile
            worker.transport.signalProcess(name)
