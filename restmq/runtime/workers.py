"""``--workers N``: one port served by N broker processes, each on a listening socket
of its own.

The main process opens N listening sockets on the port, all with ``SO_REUSEPORT``
(and owns the embedded Valkey, if any), keeps the first and starts N-1 workers:
each is ``twistd restmq`` again, with the broker's own arguments, the descriptor of
its socket (``--worker-fd``) and, with an embedded Valkey, the main process's storage
socket (``--redis-socket``), so a worker never starts a Valkey of its own. All of
them share the one Redis, which is where queues, leases and consumer counts live.

The kernel hashes each new connection to one of the N sockets, however quick each
process is to accept. The main process accepts on its own socket only once every
worker says it serves (``SERVING`` in its log), so the broker's first answer means
all of them accept, and the connections a client opens right after it spread like
later ones. (With one shared socket, the process up first took every connection
made before the others were up, and kept-alive connections stay where they land.)
Connections made before the first answer wait in the sockets' queues.

The main process keeps its copy of every worker's socket: when a worker dies it
accepts on that socket itself (nothing queued there is lost) until the worker it
starts again says it serves. It relays the workers' log lines, restarts a worker
that dies (waiting longer each time it keeps dying) and, when it stops, stops them
with SIGTERM (each does the broker's loss-free stop) before its Valkey. A worker
gets SIGTERM from Linux when the main process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import sys
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from restmq.runtime.lifeline import PARENT_PID_VARIABLE, die_with_parent
from restmq.runtime.supervisor import Exit, Supervisor

log = Logger(namespace="restmq.workers")

STOP_TIMEOUT = 20.0  # seconds a worker has for its loss-free stop before SIGKILL
# Connections a socket holds until its process accepts: a client's whole pool, made
# while the worker that owns the socket is still starting, must wait there, not be
# dropped (the kernel caps this at net.core.somaxconn).
BACKLOG = 1024
#: what a process logs once it accepts on its socket; the main process watches for it
SERVING = "serving the broker's port"

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


def _family(interface: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def listening_sockets(port: int, interface: str, count: int) -> list[socket.socket]:
    """``count`` sockets listening on ``port`` together (``SO_REUSEPORT``), one per
    process; port 0 picks one free port for all of them.

    Raises ``CannotListenError`` when the port is taken, as a broker of one process
    would: without the check, a second broker started on the same port by mistake
    would join this one's sockets and take half of its connections.
    """
    family = _family(interface)
    if port:
        _check_free(family, interface, port)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            listening = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(listening)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listening.bind((interface, port))
            port = listening.getsockname()[1]  # the one port 0 picked, for the others
            listening.listen(BACKLOG)
            listening.setblocking(False)  # as the reactor needs (shared by every copy)
    except OSError as exc:
        for listening in sockets:
            listening.close()
        raise CannotListenError(interface, port, exc) from None
    return sockets


def _check_free(family: socket.AddressFamily, interface: str, port: int) -> None:
    # A socket without SO_REUSEPORT cannot bind where anyone listens, with it or not.
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind((interface, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CannotListenError(interface, port, exc) from None
        raise
    finally:
        probe.close()


def _with_tls(factory, tls):
    # What listenSSL does: TLS is a protocol wrapper over each TCP connection.
    return factory if tls is None else TLSMemoryBIOFactory(tls, False, factory)


def adopt_port(reactor, fd: int, interface: str, factory, tls=None) -> IListeningPort:
    """Accept connections on the listening socket ``fd``; the caller still owns ``fd``.

    With TLS the TCP socket is adopted and each connection wrapped here. The port
    listens on a duplicate of ``fd``, and closing it does not shut the socket down:
    another process (or the main process's copy) may still listen on it.
    """
    return reactor.adoptStreamPort(fd, _family(interface), _with_tls(factory, tls))


# -- in a worker -------------------------------------------------------------------------


def become_worker() -> None:
    """Die with the main process; leave its process group, so that a Ctrl-C meant for
    the main process does not reach the workers: it stops them itself, in order."""
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)
    if parent is not None:
        die_with_parent(int(parent), signal.SIGTERM)
    os.setpgid(0, 0)


# -- in the main process -----------------------------------------------------------------


class _Worker(Supervisor):
    """One worker process (``slot`` 1 to N-1) on its ``listening`` socket, restarted
    when it dies; meanwhile the main process accepts on that socket itself."""

    restart_backoff = (0.5, 1.0, 2.0, 5.0, 10.0)
    stop_timeout = STOP_TIMEOUT

    def __init__(self, pool: WorkerPool, slot: int, listening: socket.socket) -> None:
        super().__init__(
            pool.reactor, directory=pool.directory, inherited_fds=(listening.fileno(),)
        )
        self.pool = pool
        self.slot = slot
        self.listening = listening
        self.standing_in: IListeningPort | None = None  # the main process's port on it
        self.served = False  # said once that it serves

    def command(self) -> list[str]:
        return self.pool.command(self.listening.fileno())

    def started(self, pid: int, again: bool) -> None:
        log.info("started worker {slot} (pid {pid})", slot=self.slot, pid=pid)

    def line_received(self, line: str) -> None:
        text = _TIMESTAMP.sub("", line)
        if text:
            log.info("worker {pid}: {line}", pid=self.pid, line=text)
        if SERVING in text:
            self.served = True
            self.stand_down()
            self.pool.check_serving()

    def ended(self, pid: int, how: Exit, restart_in: float | None) -> None:
        if restart_in is not None:
            log.warn(
                "worker {slot} (pid {pid}) ended ({how}); starting it again in {delay} s",
                slot=self.slot,
                pid=pid,
                how=how.describe("exit status"),
                delay=restart_in,
            )
            self._stand_in()

    def killing(self, pid: int) -> None:
        log.warn("worker {pid} did not stop in time; killing it", pid=pid)

    def _stand_in(self) -> None:
        # The dead worker's queued connections, and the new ones the kernel still
        # hashes to its socket, are served here rather than left waiting.
        if self.standing_in is None and self.listening.fileno() != -1:
            self.standing_in = self.pool.adopt(self.listening.fileno())
            log.info("accepting on worker {slot}'s socket until it is back", slot=self.slot)

    def stand_down(self) -> defer.Deferred:
        """The main process stops accepting on this worker's socket (if it did)."""
        port, self.standing_in = self.standing_in, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes of ``--workers``.

    ``sockets``: one listening socket per worker, kept open here for as long as the
    pool runs; ``command(fd)``: a worker's command line; ``adopt(fd)``: a port of the
    main process's application on a socket (see ``adopt_port``).
    """

    def __init__(
        self,
        reactor,
        sockets: list[socket.socket],
        command: Callable[[int], list[str]],
        directory: str,
        adopt: Callable[[int], IListeningPort],
    ) -> None:
        self.reactor = reactor
        self.command = command
        self.directory = directory
        self.adopt = adopt
        self.workers = [_Worker(self, slot, listening) for slot, listening in enumerate(sockets, 1)]
        self._waiting: list[defer.Deferred] = []

    def every_one_serving(self) -> defer.Deferred:
        """Fires once every worker has said that it serves its socket."""
        waiting: defer.Deferred = defer.Deferred()
        self._waiting.append(waiting)
        self.check_serving()
        return waiting

    def check_serving(self) -> None:
        if all(worker.served for worker in self.workers):
            waiting, self._waiting = self._waiting, []
            for each in waiting:
                if not each.called:  # cancelled by a stop meanwhile
                    each.callback(None)

    @property
    def count(self) -> int:
        """Workers, the main process not included."""
        return len(self.workers)

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers if worker.pid]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self) -> defer.Deferred:
        """SIGTERM every worker; fires once all have exited (SIGKILL after STOP_TIMEOUT).

        The sockets close here: once the workers close theirs, the port takes no more
        connections.
        """
        running = sum(worker.running for worker in self.workers)
        if running:
            log.info("stopping {n} worker(s)", n=running)
        steps = []
        for worker in self.workers:
            steps += [worker.stand_down(), worker.stop()]
            with contextlib.suppress(OSError):
                worker.listening.close()
        return defer.DeferredList(steps).addCallback(lambda _: None)
