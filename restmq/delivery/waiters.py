"""WaiterRegistry: long-poll requests parked until their queue has a message.

A ``GET /q/<q>?wait=S`` that finds the queue empty parks here. Each queue has a
line of waiters, oldest first. When a message may have arrived (an ``add`` notice
on the queue's channel from any broker sharing the Redis, or an add on this
broker) the line is drained: the oldest waiter makes its own take (the ordinary
pop or lease script call), and if that got something the waiter is answered and
leaves the line. So each message goes to exactly one waiter, oldest first, with
no polling. A waiter that times out, disconnects or is stopped takes nothing: a
take that was already under way for it puts its messages back at the head (its
give-back: a requeue, or a release of the leases that counts no delivery).

The channel subscription is shared with the streaming consumers through the
broker's one Notifications object (each holder subscribes and unsubscribes once).
A slow sweep wakes every line now and then, in case a notice was lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from restmq.engine import notices
from restmq.engine.messages import TakenMessage
from restmq.engine.queues import QueueEngine
from restmq.errors import StorageUnavailable

log = Logger(namespace="restmq.waiters")

Take = Callable[[], Awaitable[list[TakenMessage]]]
GiveBack = Callable[[list[TakenMessage]], Awaitable[Any]]
Gone = Callable[[], bool]


class Waiter:
    """One parked request: how it takes, how it gives back, and its answer to come."""

    def __init__(self, queue: str, take: Take, give_back: GiveBack, gone: Gone) -> None:
        self.queue = queue
        self.take = take
        self.give_back = give_back
        self.gone = gone  # True once the client has disconnected
        self.answer: defer.Deferred = defer.Deferred()
        self.timer: Any = None

    @property
    def settled(self) -> bool:
        """Answered already (messages, timeout, stop), or nobody is left to answer."""
        return self.answer.called or self.gone()

    def settle(self, messages: list[TakenMessage]) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if not self.answer.called:
            self.answer.callback(messages)


@dataclass
class _Line:
    waiters: deque[Waiter] = field(default_factory=deque)
    draining: bool = False
    again: bool = False  # woken while draining: look once more


class WaiterRegistry:
    """Parked long-poll requests per queue, and the drain that answers them."""

    sweep_interval = 5.0  # seconds between safety wake-ups of every line

    def __init__(self, engine: QueueEngine, reactor) -> None:
        self.engine = engine
        self.reactor = reactor
        self.notifications = None
        self._lines: dict[str, _Line] = {}
        self._stopped = False
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = reactor

    # -- life cycle ---------------------------------------------------------

    def start(self, notifications) -> None:
        self.notifications = notifications
        self._sweeper.start(self.sweep_interval, now=False)

    def stop(self) -> None:
        """Answer every waiter at once with nothing (its client gets a 204)."""
        self._stopped = True
        if self._sweeper.running:
            self._sweeper.stop()
        for queue in list(self._lines):
            line = self._lines.pop(queue)
            for waiter in line.waiters:
                waiter.settle([])
            self._unsubscribe(queue)

    # -- waiting ------------------------------------------------------------

    def has_waiters(self, queue: str) -> bool:
        return queue in self._lines

    def count(self, queue: str) -> int:
        line = self._lines.get(queue)
        return len(line.waiters) if line else 0

    async def wait(
        self,
        queue: str,
        take: Take,
        give_back: GiveBack,
        seconds: float,
        gone: Gone = lambda: False,
    ) -> list[TakenMessage]:
        """Join the queue's line; what ``take`` got once it got something, or [] after
        ``seconds`` (or at once when the broker is stopping). Once ``gone()`` says the
        client left, the waiter takes nothing more and leaves the line."""
        if self._stopped:
            return []
        waiter = Waiter(queue, take, give_back, gone)
        waiter.timer = self.reactor.callLater(seconds, waiter.settle, [])
        line = self._lines.get(queue)
        if line is None:
            line = self._lines[queue] = _Line()
            line.waiters.append(waiter)
            if self.notifications is not None:
                # Look only once subscribed, so that no add notice slips in between.
                subscribed = self.notifications.subscribe(self.engine.channel(queue))
                subscribed.addBoth(lambda _: self.wake(queue))
            else:
                self.wake(queue)
        else:
            line.waiters.append(waiter)
            self.wake(queue)  # a message may have come between our empty take and now
        try:
            return await waiter.answer
        finally:
            self._forget(waiter)

    def _forget(self, waiter: Waiter) -> None:
        line = self._lines.get(waiter.queue)
        if line is None or waiter not in line.waiters:
            return
        line.waiters.remove(waiter)
        if not line.waiters and not line.draining:
            self._close(waiter.queue)

    def _close(self, queue: str) -> None:
        del self._lines[queue]
        self._unsubscribe(queue)

    def _unsubscribe(self, queue: str) -> None:
        if self.notifications is not None:
            self.notifications.unsubscribe(self.engine.channel(queue))

    # -- waking -------------------------------------------------------------

    def on_notice(self, channel: str, message: str) -> None:
        """A message on a queue channel: messages were added or put back."""
        if message != notices.ADD:
            return
        queue = self.engine.queue_of_channel(channel)
        if queue is not None:
            self.wake(queue)

    def sweep(self) -> None:
        """The safety net (and what follows a pub/sub reconnect): look at every line."""
        for queue in list(self._lines):
            self.wake(queue)

    def wake(self, queue: str) -> None:
        line = self._lines.get(queue)
        if line is None:
            return
        if line.draining:
            line.again = True
            return
        line.draining = True
        defer.ensureDeferred(self._drain(queue, line))

    async def _drain(self, queue: str, line: _Line) -> None:
        try:
            while line.waiters:
                line.again = False
                waiter = line.waiters[0]
                if waiter.settled:  # its client left: it takes nothing
                    line.waiters.popleft()
                    waiter.settle([])
                    continue
                messages = await waiter.take()
                if not messages:
                    if line.again:
                        continue
                    return
                if waiter in line.waiters:
                    line.waiters.remove(waiter)
                if waiter.settled:  # timed out, left or stopped while its take ran
                    await waiter.give_back(messages)
                    continue
                waiter.settle(messages)
        except StorageUnavailable as exc:
            log.warn("could not serve the waiters of {queue}: {error}", queue=queue, error=exc)
        except Exception:
            log.failure("serving the waiters of {queue} failed", queue=queue)
        finally:
            line.draining = False
            if not line.waiters and self._lines.get(queue) is line:
                self._close(queue)
