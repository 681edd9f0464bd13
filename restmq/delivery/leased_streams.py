"""LeasedStreams: this broker's leased streams (``?lease=S&prefetch=P``) and their windows.

A leased stream gets each message under a lease and holds at most P unacknowledged
ones. It takes its own batches (one lease script call each, sized to its free
window) and competes for messages under either policy; under broadcast its batches
are copied to the unleased consumers, on this broker and (the script publishes them)
on the others. No broker takes broadcast batches for unleased consumers while the
queue has leased streams anywhere: each broker marks its queues with leased streams
in Redis, for three sweeps, refreshed by every sweep (see docs/architecture.md).

A window slot opens when the ack script (any front end, any broker) announces the
receipt, or when the lease runs out here. A leased stream that leaves releases what
it holds to the head of the queue.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from restmq.delivery.pending import Pending
from restmq.delivery.queue_consumers import QueueConsumers
from restmq.delivery.queue_drain import QueueDrain
from restmq.delivery.stream_consumer import StreamConsumer
from restmq.engine.messages import LeasedMessage, Message, StreamBatch
from restmq.engine.queues import QueueEngine

log = Logger(namespace="restmq.consumers")


class LeasedStreams:
    """The leases each leased stream here holds, and what frees or releases them."""

    def __init__(
        self,
        engine: QueueEngine,
        clock: IReactorTime,
        lines: QueueDrain[QueueConsumers],
        pending: Pending,
        *,
        origin: str,
        mark_seconds: float,
        batch_size: int,
        batch_bytes: int,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.origin = origin  # this broker, in the marks and the batches it takes
        self.mark_ms = int(mark_seconds * 1000)  # how long a mark lasts unless refreshed
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self._lines = lines
        self._pending = pending
        # stream -> the receipts it holds, oldest first, each with the timer that frees
        # its slot when the lease runs out
        self._windows: dict[StreamConsumer, dict[str, IDelayedCall]] = {}
        self._holders: dict[tuple[str, str], StreamConsumer] = {}  # (queue, receipt) -> stream

    def window(self, consumer: StreamConsumer) -> int:
        """How many more leased messages ``consumer`` may be sent now."""
        return max(0, consumer.prefetch - len(self._windows.get(consumer, ())))

    # -- taking -------------------------------------------------------------

    async def feed(self, queue: str, line: QueueConsumers) -> bool:
        """One lease batch for each leased stream with a free window, sized to it;
        True when the queue has more for them."""
        more = False
        for consumer in line.leased():
            free = self.window(consumer)
            if not free or not consumer.can_take_more() or self._lines.stopping:
                continue
            assert consumer.lease is not None
            batch = await self.engine.lease_for_streams(
                queue,
                consumer.lease,
                min(free, self.batch_size),
                origin=self.origin,
                max_bytes=self.batch_bytes,
                on_late=lambda late: self.release_unsent(queue, late.messages),
            )
            line.policy = batch.policy
            self._hand_out(queue, line, consumer, batch)
            if not batch.started or not batch.messages:
                return False
            more = batch.remaining > 0
        return more

    def _hand_out(
        self, queue: str, line: QueueConsumers, consumer: StreamConsumer, batch: StreamBatch
    ) -> None:
        """Send a leased batch to the stream it was taken for, each message holding a
        window slot until it is settled or its lease runs out; under broadcast, copies go
        to the unleased consumers here (the script published it for the other brokers)."""
        if consumer.gone or line.closed:
            self.release_unsent(queue, batch.messages)  # it left while the batch was taken
            return
        window = self._windows.setdefault(consumer, {})
        for message in batch.messages:
            receipt = message.receipt
            window[receipt] = self.clock.callLater(message.lease, self._ran_out, queue, receipt)
            self._holders[(queue, receipt)] = consumer
            consumer.send(message)
            if batch.policy == "broadcast":
                line.broadcast(Message(message.key, message.value))  # no receipt: not theirs

    # -- settling -----------------------------------------------------------

    def settle(self, queue: str, receipts: list[str]) -> None:
        """Leases were acked or released (by anyone, on any broker): the streams that
        held them here may take more."""
        freed = False
        for receipt in receipts:
            consumer = self._holders.pop((queue, receipt), None)
            if consumer is not None:
                freed = self._free(consumer, receipt) or freed
        if freed:
            self._lines.wake(queue)

    def _ran_out(self, queue: str, receipt: str) -> None:
        """A stream's lease ended unsettled: the message went back (lease sweeps, or the
        next take); the slot is free again."""
        consumer = self._holders.pop((queue, receipt), None)
        if consumer is not None and self._free(consumer, receipt):
            log.info("lease {receipt} of {kind} consumer {peer} ran out unacknowledged",
                     receipt=receipt, kind=consumer.kind, peer=consumer.peer)  # fmt: skip
            self._lines.wake(queue)

    def _free(self, consumer: StreamConsumer, receipt: str) -> bool:
        timer = self._windows.get(consumer, {}).pop(receipt, None)
        if timer is None:
            return False
        if timer.active():
            timer.cancel()
        return True

    # -- leaving ------------------------------------------------------------

    def leave(self, consumer: StreamConsumer) -> None:
        """A leased stream is gone: what it held goes back to the head of the queue now
        (what it never got does not count as a delivery). Call before its backlog is
        emptied: what waits there was never written."""
        receipts = self._let_go(consumer)
        if not receipts:
            return
        unwritten = consumer.unwritten_receipts()
        written = [receipt for receipt in receipts if receipt not in unwritten]
        if written:
            self._release(consumer.queue, written, delivered=True)
        unsent = [receipt for receipt in receipts if receipt in unwritten]
        if unsent:
            self._release(consumer.queue, unsent, delivered=False)

    def drop(self, consumer: StreamConsumer) -> None:
        """Forget what a stream held without releasing it (a purge ended the leases)."""
        self._let_go(consumer)

    def _let_go(self, consumer: StreamConsumer) -> list[str]:
        window = self._windows.pop(consumer, {})
        for receipt, timer in window.items():
            self._holders.pop((consumer.queue, receipt), None)
            if timer.active():
                timer.cancel()
        return list(window)

    def release_unsent(self, queue: str, messages: list[LeasedMessage]) -> None:
        """Leased messages no stream got go back to the head, counting no delivery."""
        receipts = [message.receipt for message in messages]
        if receipts:
            self._release(queue, receipts, delivered=False)

    def _release(self, queue: str, receipts: list[str], delivered: bool) -> None:
        self._pending.track(defer.ensureDeferred(self._release_now(queue, receipts, delivered)))

    async def _release_now(self, queue: str, receipts: list[str], delivered: bool) -> None:
        try:
            await self.engine.release(queue, receipts, delivered=delivered)
            log.info("released {n} unacknowledged message(s) of queue {queue} to its head",
                     n=len(receipts), queue=queue)  # fmt: skip
        except Exception:
            log.failure(
                "could not release {n} leased message(s) of queue {queue}; "
                "they go back when their leases run out",
                n=len(receipts),
                queue=queue,
            )

    # -- marks: leased streams, as other brokers see them -------------------

    def mark(self, queues: list[str]) -> None:
        """Tell every broker (through Redis) that this one has leased streams of
        ``queues``. Failures are logged: a sweep marks them again."""
        self._write_marks(queues, self.mark_ms)

    def withdraw(self, queues: list[str]) -> None:
        """Tell every broker that this one has no leased streams of ``queues`` any more.
        Failures are logged: the marks run out alone."""
        self._write_marks(queues, 0)

    def refresh(self) -> defer.Deferred:
        """Mark again every queue with leased streams here, before the marks run out;
        the Deferred fails when Redis could not be told."""
        queues = [queue for queue, line in self._lines.items() if line.has_leased()]
        if not queues:
            return defer.succeed(None)
        return self._pending.track(
            defer.ensureDeferred(self.engine.mark_leased_streams(queues, self.origin, self.mark_ms))
        )

    def _write_marks(self, queues: list[str], ttl_ms: int) -> None:
        if not queues:
            return
        d = defer.ensureDeferred(self.engine.mark_leased_streams(queues, self.origin, ttl_ms))
        self._pending.track(d).addErrback(self._could_not_mark)

    @staticmethod
    def _could_not_mark(failure) -> None:
        log.warn("could not tell other brokers about leased streams: {error}",
                 error=failure.getErrorMessage())  # fmt: skip
