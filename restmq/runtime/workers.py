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

import os
import re
import signal
import socket
import sys
from collections.abc import Callable

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from restmq.runtime.lifeline import PARENT_PID_VARIABLE, die_with_parent
from restmq.runtime.supervisor import Exit, Supervisor

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


class _Worker(Supervisor):
    """One worker process (``slot`` 1 to N-1), restarted when it dies."""

    restart_backoff = (0.5, 1.0, 2.0, 5.0, 10.0)
    stop_timeout = STOP_TIMEOUT

    def __init__(self, pool: WorkerPool, slot: int) -> None:
        super().__init__(pool.reactor, directory=pool.directory, inherited_fds=(pool.fd,))
        self.pool = pool
        self.slot = slot

    def command(self) -> list[str]:
        return self.pool.command()

    def started(self, pid: int, again: bool) -> None:
        log.info("started worker {slot} (pid {pid})", slot=self.slot, pid=pid)

    def line_received(self, line: str) -> None:
        text = _TIMESTAMP.sub("", line)
        if text:
            log.info("worker {pid}: {line}", pid=self.pid, line=text)

    def ended(self, pid: int, how: Exit, restart_in: float | None) -> None:
        if restart_in is not None:
            log.warn(
                "worker {slot} (pid {pid}) ended ({how}); starting it again in {delay} s",
                slot=self.slot,
                pid=pid,
                how=how.describe("exit status"),
                delay=restart_in,
            )

    def killing(self, pid: int) -> None:
        log.warn("worker {pid} did not stop in time; killing it", pid=pid)


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes of ``--workers``."""

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
        self.workers = [_Worker(self, slot) for slot in range(1, count + 1)]

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers if worker.pid]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self) -> defer.Deferred:
        """SIGTERM every worker; fires once all have exited (SIGKILL after STOP_TIMEOUT)."""
        running = sum(worker.running for worker in self.workers)
        if running:
            log.info("stopping {n} worker(s)", n=running)
        stopped = defer.DeferredList([worker.stop() for worker in self.workers])
        return stopped.addCallback(lambda _: None)
