"""UnleasedFeed: the batches taken for the unleased streaming consumers of each queue.

The add script publishes a notice on the queue's channel; every broker with consumers
of that queue hears it and takes a batch with one script call, then hands it out by
the queue's policy (restmq.delivery.queue_consumers):

- **broadcast**: the taking broker hands the batch to its own consumers and the
  script publishes it for the other brokers, so each consumer on each broker gets
  each message once;
- **roundrobin**: the brokers race for batches sized to their consumers, so no
  message goes twice.

What this broker took and no consumer here took goes back to the queue.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from restmq.delivery.pending import Pending
from restmq.delivery.queue_consumers import QueueConsumers
from restmq.delivery.queue_drain import QueueDrain
from restmq.engine import notices
from restmq.engine.messages import Message, StreamBatch, TakenMessage
from restmq.engine.queues import QueueEngine
from restmq.metrics import STREAM, Metrics

log = Logger(namespace="restmq.consumers")


class UnleasedFeed:
    """Takes batches for the unleased consumers here, hands them out, puts back the rest."""

    def __init__(
        self,
        engine: QueueEngine,
        lines: QueueDrain[QueueConsumers],
        pending: Pending,
        metrics: Metrics,
        *,
        origin: str,
        batch_size: int,
        batch_bytes: int,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.origin = origin  # tells our own broadcast batches from others'
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self._lines = lines
        self._pending = pending

    async def feed(self, queue: str, line: QueueConsumers) -> bool:
        """One take_for_streams batch for the unleased consumers that can take more;
        True when the queue has more for them."""
        ready = sum(1 for c in line.unleased() if c.can_take_more())
        if not ready:
            return False  # resumeProducing wakes us again
        leased_here = line.has_leased()
        if leased_here and line.policy == "broadcast":
            return False  # they get copies of what the leased consumers take
        # Whether the batch's PUBLISH counts us, known before it runs (a stop
        # may close the subscription before the reply is handed out).
        ours = self._lines.hears(queue)
        batch = await self.engine.take_for_streams(
            queue,
            roundrobin_batch=min(ready, self.batch_size),
            # with leased consumers here a broadcast batch is theirs to take
            broadcast_batch=0 if leased_here else self.batch_size,
            origin=self.origin,
            max_bytes=self.batch_bytes,
            on_late=lambda late, ours=ours: self._late_batch(queue, late, ours),
        )
        line.policy = batch.policy
        await self._deliver(queue, line, batch, ours)
        return batch.started and bool(batch.messages) and batch.remaining > 0

    async def _deliver(
        self, queue: str, line: QueueConsumers, batch: StreamBatch, ours: bool
    ) -> None:
        if batch.messages:
            leftovers = line.hand_out(batch, ours)
            self.metrics.taken(queue, STREAM, len(batch.messages) - len(leftovers))
            if leftovers:
                await self._requeue(queue, leftovers)

    def _late_batch(self, queue: str, batch: StreamBatch, ours: bool) -> None:
        """A batch Redis handed over after the drain gave up on it: deliver it now
        (while stopping, to nobody: it all goes back)."""
        line = None if self._lines.stopping else self._lines.get(queue)
        d = defer.ensureDeferred(self._deliver(queue, line or QueueConsumers(), batch, ours))
        self._pending.track(d).addErrback(
            lambda f: log.failure("late delivery to {queue} failed", f, queue=queue)
        )

    def deliver_published(self, queue: str, payload: str) -> None:
        """Another broker took a broadcast batch and published it: hand it out here."""
        try:
            batch = notices.decode_batch(payload)
        except notices.UnreadableBatch as exc:
            log.warn("ignored a batch notice on queue {queue}: {why}", queue=queue, why=exc)
            return
        if batch.origin == self.origin:
            return  # our own batch, handed out when we took it
        line = self._lines.get(queue)
        if line is None:
            return
        for key, body in batch.messages:
            line.broadcast(Message(key, body))

    def give_back(self, queue: str, messages: list[TakenMessage]) -> None:
        """Put messages no consumer wrote back on their queue."""
        if messages:
            self._pending.track(defer.ensureDeferred(self._requeue(queue, messages)))

    async def _requeue(self, queue: str, messages: list[TakenMessage]) -> None:
        try:
            await self.engine.requeue(queue, messages)
            log.info("put {n} undelivered message(s) back on queue {queue}",
                     n=len(messages), queue=queue)  # fmt: skip
        except Exception:
            log.failure(
                "could not put {n} undelivered message(s) back on queue {queue}",
                n=len(messages),
                queue=queue,
            )
