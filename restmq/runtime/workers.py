"""``--workers N``: one port served by N broker processes, the main process dealing
the connections out in turn.

The main process (which owns the embedded Valkey, if any) listens on the port and
starts N-1 workers: each is ``twistd restmq`` again, with the broker's own arguments,
its end of a UNIX socket pair made for it (``--worker-fd``) and, with an embedded
Valkey, the main process's storage socket (``--redis-socket``), so a worker never
starts a Valkey of its own. All of them share the one Redis, which is where queues,
leases and consumer counts live.

The main process accepts every connection and deals them round-robin over the
processes that serve, itself included; a worker's go to it over its pair
(``connection_dealer``). The split is exact: of 50 connections a client pool opens at
once, each of 2 processes gets 25, and a kept-alive connection stays where it was
dealt. (With one socket per process and ``SO_REUSEPORT``, the kernel hashed each
connection to a socket: a random split, 18 and 32 of 50 being common.) It costs the
main process one ``sendmsg`` per connection it deals to a worker; requests and
answers go straight between the client and the process that holds the connection.

The main process accepts only once every worker says it serves (``SERVING`` in its
log), so the broker's first answer means all of them take connections; those made
before wait in the listening socket's backlog. When a worker dies it is skipped: its
share goes to the others, and the connections dealt to it that it had not taken yet
are taken back (this process keeps the worker's end of the pair) and dealt again, so
none is lost; it is dealt to again once the worker started again says it serves.
The main process relays the workers' log lines, restarts a worker that dies (waiting
longer each time it keeps dying) and, when it stops, stops dealing first, then stops
the workers with SIGTERM (each takes what was dealt to it and does the broker's
loss-free stop) before its Valkey. A worker gets SIGTERM from Linux when the main
process dies, even by SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable

from twisted.internet import defer
from twisted.logger import Logger

from restmq.runtime.connection_dealer import Outbox
from restmq.runtime.lifeline import PARENT_PID_VARIABLE, die_with_parent
from restmq.runtime.supervisor import Exit, Supervisor

log = Logger(namespace="restmq.workers")

STOP_TIMEOUT = 20.0  # seconds a worker has for its loss-free stop before SIGKILL
#: what a process logs once it takes connections; the main process watches for it
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
    """One worker process (``slot`` 1 to N-1), restarted when it dies; ``outbox``
    holds the connections dealt to it, and is dealt to only while it serves."""

    restart_backoff = (0.5, 1.0, 2.0, 5.0, 10.0)
    stop_timeout = STOP_TIMEOUT

    def __init__(self, pool: WorkerPool, slot: int) -> None:
        self.outbox = Outbox(pool.reactor, f"worker {slot}")
        super().__init__(
            pool.reactor,
            directory=pool.directory,
            inherited_fds=(self.outbox.workers_end.fileno(),),
        )
        self.pool = pool
        self.slot = slot
        self.served = False  # said once that it serves

    def command(self) -> list[str]:
        return self.pool.command(self.outbox.workers_end.fileno())

    def started(self, pid: int, again: bool) -> None:
        log.info("started worker {slot} (pid {pid})", slot=self.slot, pid=pid)

    def line_received(self, line: str) -> None:
        text = _TIMESTAMP.sub("", line)
        if text:
            log.info("worker {pid}: {line}", pid=self.pid, line=text)
        if SERVING in text:
            self.served = True
            self.outbox.serving = True
            self.pool.check_serving()

    def ended(self, pid: int, how: Exit, restart_in: float | None) -> None:
        # What was dealt to it and not taken yet goes to those still serving.
        back = self.outbox.withdraw()
        if restart_in is not None:
            log.warn(
                "worker {slot} (pid {pid}) ended ({how}); starting it again in {delay} s",
                slot=self.slot,
                pid=pid,
                how=how.describe("exit status"),
                delay=restart_in,
            )
            log.info(
                "dealing worker {slot}'s share to the others until it is back"
                " ({n} connection(s) it had not taken dealt again)",
                slot=self.slot,
                n=len(back),
            )
        for connection in back:
            self.outbox.give_back(connection)

    def killing(self, pid: int) -> None:
        log.warn("worker {pid} did not stop in time; killing it", pid=pid)


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes of ``--workers``.

    ``command(fd)``: a worker's command line, ``fd`` being its end of its pair; each
    worker's ``outbox`` is where the main process's ``Dealer`` puts its connections.
    """

    def __init__(
        self,
        reactor,
        count: int,
        command: Callable[[int], list[str]],
        directory: str,
    ) -> None:
        self.reactor = reactor
        self.command = command
        self.directory = directory
        self.workers = [_Worker(self, slot) for slot in range(1, count + 1)]
        self._waiting: list[defer.Deferred] = []

    @property
    def outboxes(self) -> list[Outbox]:
        return [worker.outbox for worker in self.workers]

    def every_one_serving(self) -> defer.Deferred:
        """Fires once every worker has said that it serves."""
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

        The main process has stopped dealing by then; each worker takes what was
        dealt to it before it stops. The pairs close once the workers are gone.
        """
        running = sum(worker.running for worker in self.workers)
        if running:
            log.info("stopping {n} worker(s)", n=running)
        stopped = defer.DeferredList([worker.stop() for worker in self.workers])

        def close(_) -> None:
            for worker in self.workers:
                worker.outbox.close()

        return stopped.addCallback(close)
