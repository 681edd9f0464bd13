"""QueueDrain: the queues with members on this broker, each drained by one loop at a time.

Streaming consumers (restmq.delivery.consumers) and long-poll waiters
(restmq.delivery.waiters) are fed by the same rules:

- A queue's first member subscribes to the queue's channel, and the queue is looked
  at once the server confirmed it, so that no add notice slips in between; every
  later member wakes the queue at once.
- A wake while the queue is being drained only asks the drain to look once more: one
  drain per queue at a time. The drain takes step after step while the queue has
  members and the last step (or a wake meanwhile) says there may be more.
- When the last member leaves, the queue is closed and its channel unsubscribed; if
  a drain runs then, it closes the queue when it ends (a member joining meanwhile
  is served by it).
- Every ``interval`` seconds a sweep looks at every queue, a few at a time, in case
  a notice was lost. A storage outage the drains meet is logged once when it begins
  and once when a sweep's drains all work again, however many fail in between.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from restmq.delivery.pending import Pending
from restmq.engine.queues import QueueEngine
from restmq.errors import StorageUnavailable
from restmq.lifecycle import Outage, Periodic


class Line:
    """One queue's members on this broker, and the state of its drain."""

    def __init__(self) -> None:
        self.members: deque[Any] = deque()  # oldest first
        self.draining = False
        self.again = False  # woken while draining: look once more
        self.closed = False  # the queue was closed here: its members are gone


L = TypeVar("L", bound=Line)

#: One look at a queue for its members; True when the queue may have more for them.
Step = Callable[[str, L], Awaitable[bool]]


class QueueDrain(Generic[L]):
    """The lines of the queues with members here, their drains and their sweep.

    ``step`` is one look at a queue for its members; ``what`` names the work in the
    log ("delivery to the consumers"); ``before_sweep`` runs at the start of every
    sweep, which fails with it.
    """

    def __init__(
        self,
        engine: QueueEngine,
        clock: IReactorTime,
        step: Step,
        *,
        what: str,
        log: Logger,
        new_line: Callable[[], L] = Line,
        interval: float = 5.0,
        concurrency: int = 16,
        pending: Pending | None = None,
        before_sweep: Callable[[], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.notifications = None
        self.what = what
        self.concurrency = concurrency  # queues a sweep looks at together
        self.stopping = False
        self._step = step
        self._log = log
        self._new_line = new_line
        self._before_sweep = before_sweep
        self._pending = pending if pending is not None else Pending()
        self._lines: dict[str, L] = {}
        self._sweeping: defer.Deferred | None = None
        self._outage = Outage(log, what, interval)
        self._sweeper = Periodic(clock, interval, self.sweep, what=f"the sweep ({what})", log=log)

    # -- life cycle ---------------------------------------------------------

    def attach(self, notifications) -> None:
        """Subscribe queue channels on ``notifications`` (restmq.storage.notify) from now on."""
        self.notifications = notifications

    def start(self) -> None:
        self._sweeper.start()

    def stop(self) -> defer.Deferred:
        """Start no drain any more; fires once the sweep and the drains under way ended."""
        self.stopping = True
        swept = self._sweeper.stop()
        return defer.gatherResults(
            [swept, defer.ensureDeferred(self._pending.settled())], consumeErrors=True
        )

    # -- lines --------------------------------------------------------------

    def get(self, queue: str) -> L | None:
        return self._lines.get(queue)

    def __contains__(self, queue: str) -> bool:
        return queue in self._lines

    def items(self) -> list[tuple[str, L]]:
        return list(self._lines.items())

    def join(self, queue: str, member: Any) -> L:
        """Add ``member`` to the line of ``queue`` and look at the queue for it."""
        line = self._lines.get(queue)
        if line is None:
            line = self._lines[queue] = self._new_line()
            line.members.append(member)
            if self.notifications is not None:
                # Look only once subscribed, so that no add notice slips in between.
                subscribed = self.notifications.subscribe(self.engine.channel(queue))
                subscribed.addBoth(self._subscribed, queue)
                return line
        else:
            line.members.append(member)  # a message may have come just before it joined
        self.wake(queue)
        return line

    def _subscribed(self, _result: object, queue: str) -> None:
        self.wake(queue)

    def leave(self, queue: str, member: Any) -> bool:
        """Take ``member`` out of its line (False when it was in none); the last one to
        leave closes the queue, unless its drain runs (which closes it when done)."""
        line = self._lines.get(queue)
        if line is None or member not in line.members:
            return False
        line.members.remove(member)
        if not line.members and not line.draining:
            self.close(queue)
        return True

    def close(self, queue: str) -> L | None:
        """Forget the line of ``queue`` and unsubscribe its channel; the line, if any."""
        line = self._lines.pop(queue, None)
        if line is None:
            return None
        line.closed = True
        if self.notifications is not None:
            self.notifications.unsubscribe(self.engine.channel(queue))
        return line

    def close_all(self) -> list[tuple[str, L]]:
        return [(queue, line) for queue in list(self._lines) if (line := self.close(queue))]

    def hears(self, queue: str) -> bool:
        """Whether this broker now hears what is published on ``queue``'s channel."""
        return self.notifications is not None and self.notifications.is_subscribed(
            self.engine.channel(queue)
        )

    # -- draining -----------------------------------------------------------

    def wake(self, queue: str) -> defer.Deferred | None:
        """Look at ``queue`` for its members: a drain that ends with ``True`` unless it
        met a storage outage; None when one was under way (it looks once more)."""
        line = self._lines.get(queue)
        if line is None or self.stopping:
            return None
        if line.draining:
            line.again = True
            return None
        line.draining = True  # at once, so that a wake in the meantime only sets `again`
        return self._pending.track(defer.ensureDeferred(self._drain(queue, line)))

    async def _drain(self, queue: str, line: L) -> bool:
        try:
            while line.members and not self.stopping:
                line.again = False
                more = await self._step(queue, line)
                if not (more or line.again):
                    break
        except StorageUnavailable as exc:
            self._outage.began(exc)
            return False
        except Exception:
            self._log.failure("{what} of {queue} failed", what=self.what, queue=queue)
        finally:
            line.draining = False
            if not line.members and self._lines.get(queue) is line:
                self.close(queue)
        return True

    def sweep(self) -> defer.Deferred:
        """The safety net (and what follows a pub/sub reconnect): look at every queue.

        Thousands of queues must not become thousands of Redis calls in one reactor
        turn (that would crowd out producers), so only ``concurrency`` drains start
        together. Fires once they ended.
        """
        if self._sweeping is not None:
            return self._sweeping
        sweeping = defer.ensureDeferred(self._sweep())
        if not sweeping.called:  # one sweep at a time: a sweep asked for meanwhile is this one
            self._sweeping = sweeping
            sweeping.addBoth(self._swept)
        return sweeping

    def _swept(self, result: object) -> object:
        self._sweeping = None
        return result

    async def _sweep(self) -> None:
        prepared = defer.maybeDeferred(self._before_sweep or (lambda: None))
        slots = defer.DeferredSemaphore(self.concurrency)
        looks = [slots.run(self.wake, queue) for queue in list(self._lines)]
        results = await defer.DeferredList(looks, consumeErrors=True)
        try:
            await prepared
        except StorageUnavailable as exc:
            self._outage.began(exc)
            return
        # Only drains this sweep ran tell: a queue being drained already was skipped.
        drained = [result for ok, result in results if ok and result is not None]
        if drained and all(drained):
            self._outage.over()
