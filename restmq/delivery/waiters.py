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

The lines follow the rules of restmq.delivery.queue_drain, as the streaming
consumers do: one drain per line, the channel subscribed while the line has
waiters (through the broker's one Notifications object, which each holder
subscribes and unsubscribes once), and a slow sweep in case a notice was lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.delivery.queue_drain import Line, QueueDrain
from restmq.engine import notices
from restmq.engine.messages import TakenMessage
from restmq.engine.queues import QueueEngine

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


class WaiterRegistry:
    """Parked long-poll requests per queue, and the drain that answers them."""

    sweep_interval = 5.0  # seconds between safety wake-ups of every line

    def __init__(self, engine: QueueEngine, reactor) -> None:
        self.engine = engine
        self.reactor = reactor
        self._lines: QueueDrain[Line] = QueueDrain(
            engine,
            reactor,
            self._serve_oldest,
            what="serving the waiters",
            log=log,
            interval=self.sweep_interval,
        )

    # -- life cycle ---------------------------------------------------------

    def attach(self, notifications) -> None:
        """Hear the queues' add notices through ``notifications`` (restmq.storage.notify)."""
        self._lines.attach(notifications)

    def start(self) -> None:
        self._lines.start()

    def stop(self) -> defer.Deferred:
        """Answer every waiter at once with nothing (its client gets a 204); fires once
        the takes under way gave back what they got."""
        stopped = self._lines.stop()
        for _, line in self._lines.close_all():
            for waiter in line.members:
                waiter.settle([])
        return stopped

    # -- waiting ------------------------------------------------------------

    def has_waiters(self, queue: str) -> bool:
        return queue in self._lines

    def count(self, queue: str) -> int:
        line = self._lines.get(queue)
        return len(line.members) if line else 0

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
        if self._lines.stopping:
            return []
        waiter = Waiter(queue, take, give_back, gone)
        waiter.timer = self.reactor.callLater(seconds, waiter.settle, [])
        self._lines.join(queue, waiter)
        try:
            return await waiter.answer
        finally:
            self._lines.leave(queue, waiter)

    # -- waking -------------------------------------------------------------

    def on_notice(self, channel: str, message: str) -> None:
        """A message on a queue channel: messages were added or put back."""
        if message != notices.ADD:
            return
        queue = self.engine.queue_of_channel(channel)
        if queue is not None:
            self.wake(queue)

    def sweep(self) -> defer.Deferred:
        """The safety net (and what follows a pub/sub reconnect): look at every line."""
        return self._lines.sweep()

    def wake(self, queue: str) -> None:
        self._lines.wake(queue)

    async def _serve_oldest(self, queue: str, line: Line) -> bool:
        """The oldest waiter takes; True when it got something or took nothing (its
        client left), so the next one may look."""
        waiter = line.members[0]
        if waiter.settled:  # its client left: it takes nothing
            line.members.popleft()
            waiter.settle([])
            return True
        messages = await waiter.take()
        if not messages:
            return False
        if waiter in line.members:
            line.members.remove(waiter)
        if waiter.settled:  # timed out, left or stopped while its take ran
            await waiter.give_back(messages)
        else:
            waiter.settle(messages)
        return True
