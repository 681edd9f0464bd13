"""One child process kept running: started, restarted when it dies, stopped gracefully.

The embedded Valkey (``restmq.runtime.embedded_valkey``) and each worker of ``--workers``
(``restmq.runtime.workers``) is one ``Supervisor``; a subclass says what its
process is (``command``) and what to log (``started``, ``line_received``,
``ended``, ``killing``).

Twisted has ``twisted.runner.procmon.ProcessMonitor``, which does much the same,
but it does not fit:

- it spawns without ``childFDs``: a worker must inherit its end of the socket pair
  its connections come over;
- its stop returns nothing to wait on: the broker must wait until Valkey has
  flushed its append-only file, and each worker has done its loss-free stop,
  before it goes on (releases the data dir, exits);
- it restarts a process that ran for a second at once, and doubles the delay up
  to an hour; a broker part that dies again and again must come back within
  seconds, with a short, fixed backoff;
- it has no hook to run before each start (a killed Valkey leaves its socket file
  behind, which the next one cannot bind).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq.runtime.lifeline import PARENT_PID_VARIABLE

log = Logger(namespace="restmq.supervisor")


class Exit:
    """How a child process ended: its exit code, or the signal that ended it."""

    def __init__(self, code: int | None, signal: int | None) -> None:
        self.code = code
        self.signal = signal

    def describe(self, code_word: str = "exit code") -> str:
        """``signal 9``, or ``<code_word> 1``."""
        return f"signal {self.signal}" if self.signal else f"{code_word} {self.code}"


class _Child(protocol.ProcessProtocol):
    """One run of the process: its output, line by line, and its end."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.ended = defer.Deferred()
        self._partial = b""

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    errReceived = outReceived

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if text:
            self.supervisor.line_received(text)

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        status = reason.value
        self.supervisor._child_ended(
            self, Exit(getattr(status, "exitCode", None), getattr(status, "signal", None))
        )
        self.ended.callback(None)


class Supervisor:
    """Keeps one child process running until ``stop()``; a ``restmq.lifecycle.Component``.

    A process that dies is started again after ``restart_backoff[n]`` seconds, ``n``
    being how often it died in a row (the last delay repeats); one that ran for
    ``stable_after`` seconds starts the count over. ``stop()`` sends SIGTERM, then
    SIGKILL after ``stop_timeout`` seconds, and fires once the process has exited.
    The child gets this process's pid in ``PARENT_PID_VARIABLE`` (see ``lifeline``).
    """

    restart_backoff: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0)
    stable_after = 30.0  # seconds up before the backoff starts over
    stop_timeout = 10.0  # seconds between SIGTERM and SIGKILL

    def __init__(
        self,
        reactor,
        directory: str | None = None,
        inherited_fds: Sequence[int] = (),
    ) -> None:
        self.reactor = reactor
        self.directory = directory
        self.inherited_fds = tuple(inherited_fds)
        self.stopping = False
        self.pid: int | None = None  # of the process running now, if any
        self._child: _Child | None = None
        self._transport = None
        self._started_at = 0.0
        self._deaths = 0  # in a row
        self._restart = None
        self._killer = None

    # -- what a subclass says ---------------------------------------------------------

    def command(self) -> list[str]:
        """The process's argv (its first item is the program), read at each start."""
        raise NotImplementedError

    def before_start(self) -> None:
        """Called before each start (the first one too)."""

    def started(self, pid: int, again: bool) -> None:
        """The process runs (``again``: restarted after it died)."""

    def line_received(self, line: str) -> None:
        """A line the process wrote to its standard output or error."""

    def ended(self, pid: int, how: Exit, restart_in: float | None) -> None:
        """The process is gone: stopped (``restart_in`` is None), or to be started again."""

    def killing(self, pid: int) -> None:
        """The process outlived ``stop_timeout`` after SIGTERM; SIGKILL follows."""

    # -- the lifecycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._child is not None

    def start(self) -> None:
        """Start the process now."""
        self.stopping = False
        self._spawn(again=False)

    def stop(self) -> defer.Deferred:
        """SIGTERM the process (SIGKILL after ``stop_timeout``); fires once it has exited."""
        self.stopping = True
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        child = self._child
        if child is None:
            return defer.succeed(None)
        self.signal("TERM")
        self._killer = self.reactor.callLater(self.stop_timeout, self._kill)
        done = defer.Deferred()
        child.ended.addBoth(lambda _: done.callback(None))
        return done

    def signal(self, name: str) -> None:
        """Send the process a signal (``"TERM"``, ``"KILL"``...), if it runs."""
        if self._transport is not None and self._child is not None:
            with contextlib.suppress(ProcessExitedAlready):  # it ended meanwhile
                self._transport.signalProcess(name)

    # -- inside -------------------------------------------------------------------------

    def _spawn(self, again: bool) -> None:
        self.before_start()
        argv = self.command()
        child = _Child(self)
        env = dict(os.environ, **{PARENT_PID_VARIABLE: str(os.getpid())})
        fds: dict[int, object] = {0: "w", 1: "r", 2: "r"}
        fds.update({fd: fd for fd in self.inherited_fds})
        self._transport = self.reactor.spawnProcess(
            child, argv[0], argv, env=env, path=self.directory, childFDs=fds
        )
        self._child = child
        self.pid = self._transport.pid
        self._started_at = self.reactor.seconds()
        self.started(self.pid, again)

    def _child_ended(self, child: _Child, how: Exit) -> None:
        if child is not self._child:
            return
        pid = self.pid
        self._child = self._transport = None
        self.pid = None
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        self._killer = None
        if self.stopping:
            self.ended(pid, how, None)
            return
        if self.reactor.seconds() - self._started_at >= self.stable_after:
            self._deaths = 0
        delay = self.restart_backoff[min(self._deaths, len(self.restart_backoff) - 1)]
        self._deaths += 1
        self.ended(pid, how, delay)
        self._restart = self.reactor.callLater(delay, self._spawn_again)

    def _spawn_again(self) -> None:
        self._restart = None
        if self.stopping:
            return
        try:
            self._spawn(again=True)
        except OSError:
            log.failure("could not start {what} again; trying later", what=type(self).__name__)
            delay = self.restart_backoff[-1]
            self._restart = self.reactor.callLater(delay, self._spawn_again)

    def _kill(self) -> None:
        self._killer = None
        if self._child is not None and self.pid is not None:
            self.killing(self.pid)
            self.signal("KILL")
