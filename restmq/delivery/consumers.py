"""ConsumerRegistry: this broker's live streaming consumers, per queue, and delivery.

Delivery is pushed, never polled: a queue's notices wake its drain
(restmq.delivery.queue_drain), which feeds its leased streams
(restmq.delivery.leased_streams) and then its unleased consumers
(restmq.delivery.unleased_feed). A slow periodic sweep only covers notices lost
while pub/sub was reconnecting. The registry itself keeps who is connected: joins
and leaves, the limit on consumers, the memory their backlogs hold, purges, the
heartbeat and the stop.
"""

from __future__ import annotations

import sys
import uuid

from twisted.internet import defer, task
from twisted.logger import Logger

from restmq.budget import MemoryBudget
from restmq.delivery.leased_streams import LeasedStreams
from restmq.delivery.pending import Pending
from restmq.delivery.queue_consumers import QueueConsumers
from restmq.delivery.queue_drain import QueueDrain
from restmq.delivery.stream_consumer import CLOSE_GOING_AWAY, StreamConsumer
from restmq.delivery.unleased_feed import UnleasedFeed
from restmq.engine import notices
from restmq.engine.queues import QueueEngine
from restmq.errors import TooManyConsumers
from restmq.lifecycle import Periodic
from restmq.metrics import Metrics

log = Logger(namespace="restmq.consumers")

ACK_POLL_INTERVAL = 0.05  # seconds between looks at what stopping streams' peers acknowledged


class ConsumerRegistry:
    """Live streaming consumers per queue, and the delivery loop that feeds them."""

    batch_size = 100  # messages taken at most per script call
    sweep_interval = 5.0
    sweep_concurrency = 16  # queues the sweep looks at together

    def __init__(
        self,
        engine: QueueEngine,
        reactor,
        max_consumers: int = 10000,
        max_backlog: int = 4 * 1024 * 1024,
        heartbeat_interval: float = 15.0,
        budget: MemoryBudget | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics if metrics is not None else Metrics()
        # shared with request bodies (--max-buffered); unlimited when none is given
        self.budget = budget if budget is not None else MemoryBudget(sys.maxsize)
        self.reactor = reactor
        self.max_consumers = max_consumers
        self.max_backlog = max_backlog  # bytes a paused consumer may hold before it is dropped
        self.heartbeat_interval = heartbeat_interval  # seconds between SSE keep-alive comments
        self.origin = uuid.uuid4().hex[:12]  # tells our own broadcast batches from others'
        # Batches stop at this many bytes, so one batch cannot overflow a consumer's buffer.
        self.batch_bytes = max(64 * 1024, min(1024 * 1024, max_backlog // 4))
        self._total = 0
        self._pending = Pending()  # drains, requeues, releases and marks not finished yet
        self._lines: QueueDrain[QueueConsumers] = QueueDrain(
            engine,
            reactor,
            self._feed,
            what="delivery to the consumers",
            log=log,
            new_line=QueueConsumers,
            interval=self.sweep_interval,
            concurrency=self.sweep_concurrency,
            pending=self._pending,
            before_sweep=self._refresh_marks,
        )
        batches = {"batch_size": self.batch_size, "batch_bytes": self.batch_bytes}
        self._leased = LeasedStreams(
            engine,
            reactor,
            self._lines,
            self._pending,
            origin=self.origin,
            mark_seconds=3 * self.sweep_interval,  # three sweeps
            **batches,
        )
        self._unleased = UnleasedFeed(
            engine, self._lines, self._pending, self.metrics, origin=self.origin, **batches
        )
        self._heart = Periodic(
            reactor, heartbeat_interval, self._heartbeat, what="stream heartbeats", log=log
        )

    # -- life cycle ---------------------------------------------------------

    def attach(self, notifications) -> None:
        """Subscribe the queues' channels on ``notifications`` (restmq.storage.notify)."""
        self._lines.attach(notifications)

    def start(self) -> None:
        self._lines.start()
        self._heart.start()

    @property
    def stopping(self) -> bool:
        return self._lines.stopping

    def stop(self, grace: float = 0.0) -> defer.Deferred:
        """Stop taking batches, hand out those already being taken, then end every
        stream: what its peer got stays delivered, what it did not goes back to its
        queue. A stream is written nothing more; for up to ``grace`` seconds its peer
        may take (its TCP acknowledge) what it was written already.

        Fires once those messages are back (Redis must stay connected until then).
        """
        return defer.ensureDeferred(self._stop(grace))

    async def _stop(self, grace: float) -> None:
        # A batch being taken now is handed out (or put back) first.
        await defer.gatherResults([self._lines.stop(), self._heart.stop()], consumeErrors=True)
        closed = self._lines.close_all()
        self._leased.withdraw([queue for queue, line in closed if line.has_leased()])
        streams = [(queue, consumer) for queue, line in closed for consumer in list(line.members)]
        for _, consumer in streams:
            consumer.gone = True  # nothing more is written to it
        await self._until_acknowledged([consumer for _, consumer in streams], grace)
        for queue, consumer in streams:
            got_all = consumer.settle_sent()
            self._leased.leave(consumer)
            self._unleased.give_back(queue, consumer.take_undelivered())
            if got_all:
                consumer.close("the broker is stopping", code=CLOSE_GOING_AWAY)
            else:
                # What its peer did not acknowledge went back: a reset discards it
                # rather than deliver it too (what the peer's TCP holds stays readable).
                consumer.abort()
        self._total = 0
        await self._pending.settled()

    async def _until_acknowledged(self, consumers: list[StreamConsumer], grace: float) -> None:
        """Wait until the peers of ``consumers`` acknowledged what they were written,
        at most ``grace`` seconds. The kernel tells no event for it: look a few times
        a second (only while stopping)."""
        deadline = self.reactor.seconds() + grace
        waiting = [consumer for consumer in consumers if not consumer.settle_sent()]
        while waiting and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, ACK_POLL_INTERVAL, lambda: None)
            waiting = [consumer for consumer in waiting if not consumer.settle_sent()]

    # -- membership ---------------------------------------------------------

    def add(self, consumer: StreamConsumer) -> None:
        if self.stopping:
            raise TooManyConsumers("the broker is stopping; connect to it again or another broker")
        if self._total >= self.max_consumers:
            raise TooManyConsumers(
                f"this broker already serves its maximum of {self.max_consumers} streaming "
                "consumers (--max-consumers); try again later or another broker"
            )
        line = self._lines.get(consumer.queue)
        if consumer.leased and (line is None or not line.has_leased()):
            self._leased.mark([consumer.queue])
        consumer.registry = self
        self._total += 1
        log.debug("{kind} consumer {peer} joined queue {queue}", kind=consumer.kind,
                  peer=consumer.peer, queue=consumer.queue)  # fmt: skip
        self._lines.join(consumer.queue, consumer)

    def remove(self, consumer: StreamConsumer) -> None:
        consumer.gone = True
        queue = consumer.queue
        line = self._lines.get(queue)
        if line is None or not self._lines.leave(queue, consumer):
            return
        self._total -= 1
        self._leased.leave(consumer)
        if consumer.leased and not line.has_leased():
            self._leased.withdraw([queue])
        # What it held that no consumer's peer got goes back to the queue, for the others.
        self._unleased.give_back(queue, consumer.take_undelivered())

    def count(self, queue: str) -> int:
        line = self._lines.get(queue)
        return len(line.members) if line else 0

    def counts(self) -> dict[str, int]:
        """Streaming consumers per queue (queues with none left out)."""
        return {queue: len(line.members) for queue, line in self._lines.items() if line.members}

    @property
    def total(self) -> int:
        return self._total

    def counts_by_transport(self) -> dict[tuple[str, str], int]:
        """Live consumers per (queue, transport kind), for the metrics."""
        counts: dict[tuple[str, str], int] = {}
        for queue, line in self._lines.items():
            for consumer in line.members:
                key = (queue, consumer.kind)
                counts[key] = counts.get(key, 0) + 1
        return counts

    # -- memory -------------------------------------------------------------

    def reserve_backlog(self, consumer: StreamConsumer, size: int) -> bool:
        """Take ``size`` backlog bytes for ``consumer`` from the budget, dropping the
        consumers furthest behind (possibly ``consumer`` itself) to make room."""
        if self.budget.try_reserve(size):
            return True
        self.shed(size)
        return not consumer.gone and self.budget.try_reserve(size)

    def shed(self, size: int) -> int:
        """Drop the consumers with the largest backlogs until ``size`` bytes of the
        budget are free; their undelivered messages go back to their queues.
        Returns how many consumers were dropped."""
        behind = sorted(
            (c for _, line in self._lines.items() for c in line.members if c.backlog_bytes),
            key=lambda c: c.backlog_bytes,
            reverse=True,
        )
        dropped = 0
        for consumer in behind:
            if self.budget.free >= size:
                break
            log.warn(
                "{kind} consumer {peer} of queue {queue} holds {bytes} buffered bytes and "
                "the broker's memory budget (--max-buffered) is full; disconnecting it",
                kind=consumer.kind,
                peer=consumer.peer,
                queue=consumer.queue,
                bytes=consumer.backlog_bytes,
            )
            consumer.drop()
            dropped += 1
        return dropped

    # -- notices ------------------------------------------------------------

    def on_notice(self, channel: str, message: str) -> None:
        """A message on a queue channel: a wake-up, a purge, or another broker's batch."""
        queue = self.engine.queue_of_channel(channel)
        if queue is None or queue not in self._lines:
            return
        if notices.is_batch(message):
            self._unleased.deliver_published(queue, message)
        elif notices.is_settled(message):
            self.settle(queue, notices.settled_receipts(message))
        elif message in (notices.ADD, notices.START):
            self.wake(queue)
        elif message == notices.PURGE:
            self.end_streams(queue, "queue purged")

    def settle(self, queue: str, receipts: list[str]) -> None:
        """Leases were acked or released (by anyone, on any broker): the consumers that
        held them here may take more."""
        self._leased.settle(queue, receipts)

    def end_streams(self, queue: str, reason: str) -> None:
        line = self._lines.close(queue)
        if line is None:
            return
        if line.has_leased():
            self._leased.withdraw([queue])
        for consumer in list(line.members):
            self._total -= 1
            consumer.gone = True
            self._leased.drop(consumer)  # the purge dropped the leases too
            consumer.take_undelivered()  # the queue is gone, and with it what was buffered
            consumer.close(reason)
        log.info("ended {n} stream(s) of queue {queue}: {reason}",
                 n=len(line.members), queue=queue, reason=reason)  # fmt: skip

    # -- delivery -----------------------------------------------------------

    def wake(self, queue: str) -> None:
        self._lines.wake(queue)

    def sweep(self) -> defer.Deferred:
        """The safety net: mark the queues with leased streams here again, and look at
        every queue with consumers here, a few at a time."""
        return self._lines.sweep()

    async def _feed(self, queue: str, line: QueueConsumers) -> bool:
        more = await self._leased.feed(queue, line)
        return await self._unleased.feed(queue, line) or more

    def _refresh_marks(self) -> defer.Deferred:
        return self._leased.refresh()

    def _heartbeat(self) -> None:
        for _, line in self._lines.items():
            for consumer in line.members:
                if not consumer.gone:
                    consumer.heartbeat()
