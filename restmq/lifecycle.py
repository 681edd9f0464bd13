"""The one lifecycle every long-lived part of the broker follows.

``Component`` is what the service starts and stops, in one order: ``start()``
once the part may work, ``stop()`` when it must end, returning a Deferred that
fires once it has. ``Periodic`` runs a part's recurring work (sweeps, counts,
feeds): one run at a time, a failure never ending the loop, and an outage
logged once when it begins and once when it ends rather than on every run
(``Outage``, which the delivery's own drains use too).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq.errors import StorageUnavailable


class Component(Protocol):
    """A part the service starts and stops (see ``restmq.runtime.service``)."""

    def start(self) -> None: ...

    def stop(self) -> defer.Deferred: ...


class Periodic:
    """Runs ``work`` every ``interval`` seconds on ``clock`` until stopped.

    ``work`` may return a Deferred or a coroutine; the next run waits for it, so
    runs never overlap. When a run fails, the failure is logged on ``log`` as
    "<what> failed" (a warning naming the error when the storage is away, a
    traceback otherwise) and the loop goes on; further failures say nothing
    until a run succeeds again, which is logged as "<what> works again".
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        work: Callable[[], Any],
        *,
        what: str,
        log: Logger,
        now: bool = False,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.what = what
        self.now = now
        self._work = work
        self._loop: task.LoopingCall | None = None
        self._done: defer.Deferred | None = None
        self.outage = Outage(log, what, interval)

    @property
    def failing(self) -> bool:
        return self.outage.failing

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Begin running (at once with ``now``, else after one interval); idempotent."""
        if self._loop is not None:
            return
        self._loop = task.LoopingCall(self._run)
        self._loop.clock = self.clock
        self._done = self._loop.start(self.interval, now=self.now)

    def stop(self) -> defer.Deferred:
        """Stop running; the Deferred fires once a run under way has finished."""
        loop, done = self._loop, self._done
        self._loop = self._done = None
        if loop is None or done is None:
            return defer.succeed(None)
        if loop.running:
            loop.stop()
        return done

    def _run(self) -> defer.Deferred | None:
        try:
            result = self._work()
        except Exception:
            self._failed(Failure())
            return None
        if inspect.iscoroutine(result):
            result = defer.ensureDeferred(result)
        if isinstance(result, defer.Deferred):
            # Never let a failure reach the LoopingCall: it would end the loop for good.
            return result.addCallbacks(self._succeeded, self._failed)
        self._succeeded(result)
        return None

    def _succeeded(self, _result: object) -> None:
        self.outage.over()

    def _failed(self, failure: Failure) -> None:
        self.outage.began(failure)


class Outage:
    """Failures of one recurring job, said once when they begin and once when they end.

    A storage outage is a warning naming the error; any other failure is logged with
    its traceback, once too: a broken job must not fill the log every second.
    """

    def __init__(self, log: Logger, what: str, interval: float) -> None:
        self._log = log
        self.what = what
        self.interval = interval
        self.failing = False

    def began(self, reason: Failure | Exception) -> None:
        if self.failing:  # said once per outage
            return
        self.failing = True
        failure = reason if isinstance(reason, Failure) else Failure(reason)
        if failure.check(StorageUnavailable):
            self._log.warn(
                "{what} failed: {error}; retrying every {interval}s",
                what=self.what,
                error=failure.getErrorMessage(),
                interval=self.interval,
            )
        else:
            self._log.failure("{what} failed", failure, what=self.what)

    def over(self) -> None:
        if self.failing:
            self.failing = False
            self._log.info("{what} works again", what=self.what)
