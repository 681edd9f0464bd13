"""ConsumerRegistry: this broker's live streaming consumers, per queue, and delivery.

Delivery is pushed, never polled. The add script publishes a notice on the
queue's channel; every broker with consumers of that queue hears it and takes
a batch with one script call, then hands it out by the queue's policy:

- **broadcast**: every consumer gets every message. The taking broker hands the
  batch to its own consumers and the script publishes it for the other brokers,
  so each consumer on each broker gets each message once.
- **roundrobin**: each message goes to exactly one consumer, rotating; the other
  brokers race for batches sized to their consumers, so no message goes twice.

A slow periodic sweep only covers notices lost while pub/sub was reconnecting.

A **leased** consumer (``?lease=S&prefetch=P``) gets each message under a lease and
holds at most P unacknowledged ones. It takes its own batches (one lease script call
each, sized to its free window) and competes for messages under either policy; under
broadcast its batches are copied to the unleased consumers, on this broker and (the
script publishes them) on the others, and no broker takes broadcast batches for
unleased consumers while the queue has leased streams anywhere (each broker says so in
Redis, refreshed by the sweep; see docs/architecture.md). A window slot opens when the
ack script (any front end, any broker) announces the receipt, or when the lease runs
out here. A leased consumer that leaves releases what it holds to the head of the queue.
"""

from __future__ import annotations

import sys
import uuid
from collections import deque
from dataclasses import dataclass, field

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from restmq.budget import MemoryBudget
from restmq.engine import notices
from restmq.engine.messages import LeasedMessage, Message, StreamBatch, TakenMessage
from restmq.engine.queues import QueueEngine
from restmq.errors import StorageUnavailable, TooManyConsumers
from restmq.metrics import STREAM, Metrics

log = Logger(namespace="restmq.consumers")


#: WebSocket close codes (RFC 6455 7.4.1) for why a stream ends; HTTP streams ignore them
CLOSE_NORMAL = 1000  # e.g. the queue was purged
CLOSE_GOING_AWAY = 1001  # the broker is stopping


class Copies:
    """The copies of one taken message that wait in consumers' backlogs.

    A message goes back to its queue only if no consumer wrote it to its socket:
    so it goes back once, when the last consumer holding it lets go unwritten.
    """

    __slots__ = ("message", "waiting", "written")

    def __init__(self, message: TakenMessage) -> None:
        self.message = message
        self.waiting = 0  # backlogs holding it
        self.written = False  # some consumer wrote it to its socket

    def let_go(self) -> bool:
        """One backlog dropped its copy; True when the message must go back now."""
        self.waiting -= 1
        return self.waiting == 0 and not self.written


@implementer(IPushProducer)
class StreamConsumer:
    """One streaming consumer (COMET, SSE or WebSocket) with flow control.

    It is registered as the push producer of its connection, so Twisted pauses it
    when the socket's send buffer is full. While paused it takes no roundrobin
    messages and buffers broadcast ones, up to the registry's ``max_backlog``; a consumer
    that falls further behind is disconnected so that it holds nobody back.
    """

    kind = "stream"

    def __init__(self, queue: str, peer: str) -> None:
        self.queue = queue
        self.peer = peer
        self.registry: ConsumerRegistry | None = None
        self.gone = False
        self._paused = False
        # Messages waiting for the socket: (message, encoded, its Copies when it may go back)
        self._backlog: deque[tuple[Message, bytes, Copies | None]] = deque()
        self._backlog_bytes = 0
        self._reserved = 0  # backlog bytes held in the registry's memory budget
        self.lease: int | None = None  # seconds each message is leased for; None: unleased
        self.prefetch = 0  # unacknowledged messages a leased consumer may hold
        # receipt -> (the leased message, the timer that frees its slot when the lease ends)
        self.held: dict[str, tuple[LeasedMessage, IDelayedCall]] = {}

    def use_lease(self, seconds: int, prefetch: int) -> None:
        """Make this a leased consumer: messages under a lease of ``seconds``, at most
        ``prefetch`` of them unacknowledged."""
        self.lease = seconds
        self.prefetch = prefetch

    @property
    def leased(self) -> bool:
        return self.lease is not None

    def window(self) -> int:
        """How many more leased messages this consumer may be sent now."""
        return max(0, self.prefetch - len(self.held))

    def forget(self, receipt: str) -> bool:
        """The lease of ``receipt`` was settled or ran out: its slot is free."""
        entry = self.held.pop(receipt, None)
        if entry is None:
            return False
        timer = entry[1]
        if timer.active():
            timer.cancel()
        return True

    def let_go_leases(self) -> tuple[list[str], list[str]]:
        """Forget every lease held; return the receipts (oldest first) of those written to
        the socket and of those still waiting in the backlog."""
        waiting = {m.receipt for m, _, _ in self._backlog if isinstance(m, LeasedMessage)}
        receipts = list(self.held)
        for receipt in receipts:
            self.forget(receipt)
        written = [r for r in receipts if r not in waiting]
        return written, [r for r in receipts if r in waiting]

    @property
    def backlog_bytes(self) -> int:
        """Bytes of messages waiting in the broker for this consumer's socket."""
        return self._backlog_bytes

    # -- what a transport implements ---------------------------------------

    def encode(self, message: Message) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """End the stream politely (queue purged, broker stopping); ``code`` is the
        WebSocket close code that goes with ``reason``."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection at once."""
        raise NotImplementedError

    def heartbeat(self) -> None:
        """Called every ``--sse-heartbeat`` seconds; streams that need keep-alives send one."""

    # -- delivery -----------------------------------------------------------

    def can_take_more(self) -> bool:
        return not self.gone and not self._paused and not self._backlog

    def send(self, message: Message, copies: Copies | None = None) -> bool:
        """Deliver or buffer ``message``; False when the consumer is gone (not taken).

        ``copies``: where this broker took the message, so that it goes back to the
        queue if no consumer ever writes it (None: another broker took it).
        """
        if self.gone:
            return False
        data = self.encode(message)
        if self._paused or self._backlog:
            if copies is not None:
                copies.waiting += 1
            self._backlog.append((message, data, copies))
            self._backlog_bytes += len(data)
            registry = self.registry
            if registry is None:
                return True
            if self._backlog_bytes > registry.max_backlog:
                self._too_slow()
            elif registry.reserve_backlog(self, len(data)):
                self._reserved += len(data)
            elif not self.gone:
                self._too_slow()  # the budget is held by request bodies
            # else: shed to make room; what it held, this message too, went back
            return True
        self.write(data)
        if copies is not None:
            copies.written = True
        return True

    def take_backlog(self) -> list[TakenMessage]:
        """Empty the backlog; return the messages that must go back to the queue
        (no consumer wrote them and no other backlog still holds them)."""
        back = [
            copies.message
            for _, _, copies in self._backlog
            if copies is not None and copies.let_go()
        ]
        self._backlog.clear()
        self._backlog_bytes = 0
        self._give_back(self._reserved)
        return back

    def _give_back(self, size: int) -> None:
        size = min(size, self._reserved)
        self._reserved -= size
        if size and self.registry is not None:
            self.registry.budget.release(size)

    def _too_slow(self) -> None:
        log.warn(
            "{kind} consumer {peer} of queue {queue} fell {bytes} bytes behind; disconnecting it",
            kind=self.kind,
            peer=self.peer,
            queue=self.queue,
            bytes=self._backlog_bytes,
        )
        self.drop()

    def drop(self) -> None:
        """Disconnect at once; what only this consumer held goes back to the queue."""
        if self.registry is not None:
            self.registry.remove(self)
        self.gone = True
        self.abort()

    # -- IPushProducer ------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._backlog and not self._paused and not self.gone:
            _, data, copies = self._backlog.popleft()
            self._backlog_bytes -= len(data)
            self._give_back(len(data))
            self.write(data)
            if copies is not None:
                copies.written = True
                copies.waiting -= 1
        if not self._paused and not self.gone and self.registry is not None:
            self.registry.wake(self.queue)

    def stopProducing(self) -> None:
        self.gone = True


@dataclass
class _QueueConsumers:
    consumers: list[StreamConsumer] = field(default_factory=list)
    next_index: int = 0
    draining: bool = False
    again: bool = False
    policy: str | None = None  # as the last batch found it
    holders: dict[str, StreamConsumer] = field(default_factory=dict)  # receipt -> consumer

    def has_leased(self) -> bool:
        """Whether any of these consumers is a leased one."""
        return any(consumer.leased for consumer in self.consumers)


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
        self._sweeping: defer.Deferred | None = None
        self.stopping = False
        self._busy: set[defer.Deferred] = set()  # drains and requeues not finished yet
        self.notifications = None
        self._queues: dict[str, _QueueConsumers] = {}
        self._total = 0
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        self._heart = task.LoopingCall(self._heartbeat)
        self._heart.clock = reactor

    # -- life cycle ---------------------------------------------------------

    def start(self, notifications) -> None:
        self.notifications = notifications
        self._sweeper.start(self.sweep_interval, now=False)
        self._heart.start(self.heartbeat_interval, now=False)

    def stop(self) -> defer.Deferred:
        """Stop taking batches, hand out those already being taken, then end every
        stream; what no consumer wrote to its socket goes back to its queue.

        Fires once those messages are back (Redis must stay connected until then).
        """
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        for loop in (self._sweeper, self._heart):
            if loop.running:
                loop.stop()
        await self._settled()  # a batch being taken now is handed out (or put back) first
        self._mark_leased_streams(self._leased_queues(), withdraw=True)
        for queue, state in list(self._queues.items()):
            back = []
            for consumer in list(state.consumers):
                self._release_held(queue, state, consumer)  # their holders are gone too
                back += consumer.take_backlog()
                consumer.close("the broker is stopping", code=CLOSE_GOING_AWAY)
            self._keep_track(defer.ensureDeferred(self._requeue(queue, back)))
        self._queues.clear()
        self._total = 0
        await self._settled()

    async def _settled(self) -> None:
        """Wait for the drains and requeues under way (each is bounded by the Redis timeout)."""
        while self._busy:
            await defer.DeferredList(list(self._busy), consumeErrors=True)

    def _keep_track(self, d: defer.Deferred) -> defer.Deferred:
        self._busy.add(d)

        def done(result):
            self._busy.discard(d)
            return result

        return d.addBoth(done)

    # -- membership ---------------------------------------------------------

    def add(self, consumer: StreamConsumer) -> None:
        if self.stopping:
            raise TooManyConsumers("the broker is stopping; connect to it again or another broker")
        if self._total >= self.max_consumers:
            raise TooManyConsumers(
                f"this broker already serves its maximum of {self.max_consumers} streaming "
                "consumers (--max-consumers); try again later or another broker"
            )
        state = self._queues.get(consumer.queue)
        first = state is None
        if first:
            state = self._queues[consumer.queue] = _QueueConsumers()
        consumer.registry = self
        first_leased = consumer.leased and not state.has_leased()
        state.consumers.append(consumer)
        self._total += 1
        if first_leased:
            self._mark_leased_streams([consumer.queue])
        log.debug("{kind} consumer {peer} joined queue {queue}", kind=consumer.kind,
                  peer=consumer.peer, queue=consumer.queue)  # fmt: skip
        if first and self.notifications is not None:
            # Wake only once subscribed, so no add notice can slip between.
            d = self.notifications.subscribe(self.engine.channel(consumer.queue))
            d.addBoth(lambda _: self.wake(consumer.queue))
        else:
            self.wake(consumer.queue)

    def remove(self, consumer: StreamConsumer) -> None:
        consumer.gone = True
        state = self._queues.get(consumer.queue)
        if state is None or consumer not in state.consumers:
            return
        state.consumers.remove(consumer)
        self._total -= 1
        self._release_held(consumer.queue, state, consumer)
        if consumer.leased and not state.has_leased():
            self._mark_leased_streams([consumer.queue], withdraw=True)
        # What it held that no consumer wrote goes back to the queue, for the others.
        undelivered = consumer.take_backlog()
        if undelivered:
            self._keep_track(defer.ensureDeferred(self._requeue(consumer.queue, undelivered)))
        if not state.consumers:
            del self._queues[consumer.queue]
            if self.notifications is not None:
                self.notifications.unsubscribe(self.engine.channel(consumer.queue))

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
            (c for state in self._queues.values() for c in state.consumers if c.backlog_bytes),
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

    # -- leased streams, as other brokers see them --------------------------

    def _leased_queues(self) -> list[str]:
        return [q for q, state in self._queues.items() if state.has_leased()]

    def _mark_leased_streams(self, queues: list[str], withdraw: bool = False) -> None:
        """Tell every broker (through Redis) that this one has leased streams of ``queues``,
        for three sweeps; or no longer. Failures are logged: the entries run out alone."""
        if not queues:
            return
        ttl_ms = 0 if withdraw else int(3 * self.sweep_interval * 1000)
        d = defer.ensureDeferred(self.engine.mark_leased_streams(queues, self.origin, ttl_ms))
        d.addErrback(self._could_not_mark)
        self._keep_track(d)

    @staticmethod
    def _could_not_mark(failure) -> None:
        log.warn("could not tell other brokers about leased streams: {error}",
                 error=failure.getErrorMessage())  # fmt: skip

    def count(self, queue: str) -> int:
        state = self._queues.get(queue)
        return len(state.consumers) if state else 0

    def counts(self) -> dict[str, int]:
        """Streaming consumers per queue (queues with none left out)."""
        return {queue: len(state.consumers) for queue, state in self._queues.items()}

    @property
    def total(self) -> int:
        return self._total

    def counts_by_transport(self) -> dict[tuple[str, str], int]:
        """Live consumers per (queue, transport kind), for the metrics."""
        counts: dict[tuple[str, str], int] = {}
        for queue, state in self._queues.items():
            for consumer in state.consumers:
                key = (queue, consumer.kind)
                counts[key] = counts.get(key, 0) + 1
        return counts

    # -- notices ------------------------------------------------------------

    def on_notice(self, channel: str, message: str) -> None:
        """A message on a queue channel: a wake-up, a purge, or another broker's batch."""
        queue = self.engine.queue_of_channel(channel)
        if queue is None or queue not in self._queues:
            return
        if notices.is_batch(message):
            self._deliver_published(queue, message)
        elif notices.is_settled(message):
            self.settle(queue, notices.settled_receipts(message))
        elif message in (notices.ADD, notices.START):
            self.wake(queue)
        elif message == notices.PURGE:
            self.end_streams(queue, "queue purged")

    def end_streams(self, queue: str, reason: str) -> None:
        state = self._queues.pop(queue, None)
        if state is None:
            return
        if state.has_leased():
            self._mark_leased_streams([queue], withdraw=True)
        for consumer in list(state.consumers):
            self._total -= 1
            consumer.gone = True
            consumer.let_go_leases()  # the purge dropped the leases too
            consumer.take_backlog()  # the queue is gone, and with it what was buffered
            consumer.close(reason)
        if self.notifications is not None:
            self.notifications.unsubscribe(self.engine.channel(queue))
        log.info("ended {n} stream(s) of queue {queue}: {reason}",
                 n=len(state.consumers), queue=queue, reason=reason)  # fmt: skip

    def sweep(self) -> defer.Deferred:
        """The safety net: look at every queue with consumers here, a few at a time.

        Thousands of queues with consumers must not become thousands of Redis calls
        in one reactor turn (that would crowd out producers).
        """
        if self._sweeping is not None:
            return self._sweeping
        self._mark_leased_streams(self._leased_queues())  # refreshed before they run out

        def look(queue: str):
            state = self._queues.get(queue)
            if state is None or state.draining:
                return None
            return self._start_drain(queue, state)

        slots = defer.DeferredSemaphore(self.sweep_concurrency)
        looks = [slots.run(look, queue) for queue in list(self._queues)]
        self._sweeping = defer.DeferredList(looks, consumeErrors=True)

        def done(result):
            self._sweeping = None
            return result

        return self._sweeping.addBoth(done)

    def _heartbeat(self) -> None:
        for state in self._queues.values():
            for consumer in state.consumers:
                if not consumer.gone:
                    consumer.heartbeat()

    # -- delivery -----------------------------------------------------------

    def wake(self, queue: str) -> None:
        state = self._queues.get(queue)
        if state is None or self.stopping:
            return
        if state.draining:
            state.again = True
            return
        self._start_drain(queue, state)

    def _start_drain(self, queue: str, state: _QueueConsumers) -> defer.Deferred | None:
        if self.stopping:
            return None
        state.draining = True  # at once, so that a wake in the meantime only sets `again`
        return self._keep_track(defer.ensureDeferred(self._drain(queue, state)))

    async def _drain(self, queue: str, state: _QueueConsumers) -> None:
        try:
            while state.consumers and not self.stopping:
                state.again = False
                more = await self._feed_leased(queue, state)
                more = await self._feed_unleased(queue, state) or more
                if not (more or state.again):
                    return
        except StorageUnavailable as exc:
            log.warn("could not feed the consumers of {queue}: {error}", queue=queue, error=exc)
        except Exception:
            log.failure("delivery to the consumers of {queue} failed", queue=queue)
        finally:
            state.draining = False

    async def _feed_unleased(self, queue: str, state: _QueueConsumers) -> bool:
        """One take_for_streams batch for the unleased consumers that can take more;
        True when the queue has more for them."""
        ready = sum(1 for c in self._unleased(state) if c.can_take_more())
        if not ready:
            return False  # resumeProducing wakes us again
        leased_here = state.has_leased()
        if leased_here and state.policy == "broadcast":
            return False  # they get copies of what the leased consumers take
        # Whether the batch's PUBLISH counts us, known before it runs (a stop
        # may close the subscription before the reply is handed out).
        ours = self._hears(queue)
        batch = await self.engine.take_for_streams(
            queue,
            roundrobin_batch=min(ready, self.batch_size),
            # with leased consumers here a broadcast batch is theirs to take
            broadcast_batch=0 if leased_here else self.batch_size,
            origin=self.origin,
            max_bytes=self.batch_bytes,
            on_late=lambda late, ours=ours: self._late_batch(queue, late, ours),
        )
        state.policy = batch.policy
        await self._deliver(queue, state, batch, ours)
        return batch.started and bool(batch.messages) and batch.remaining > 0

    async def _feed_leased(self, queue: str, state: _QueueConsumers) -> bool:
        """One lease batch for each leased consumer with a free window, sized to it;
        True when the queue has more for them."""
        more = False
        for consumer in [c for c in state.consumers if c.leased]:
            free = consumer.window()
            if not free or not consumer.can_take_more() or self.stopping:
                continue
            assert consumer.lease is not None
            batch = await self.engine.lease_for_streams(
                queue,
                consumer.lease,
                min(free, self.batch_size),
                origin=self.origin,
                max_bytes=self.batch_bytes,
                on_late=lambda late: self._release_unsent(queue, late.messages),
            )
            state.policy = batch.policy
            self._hand_out_leased(queue, state, consumer, batch)
            if not batch.started or not batch.messages:
                return False
            more = batch.remaining > 0
        return more

    def _hand_out_leased(
        self, queue: str, state: _QueueConsumers, consumer: StreamConsumer, batch: StreamBatch
    ) -> None:
        """Send a leased batch to the consumer it was taken for, each message holding a
        window slot until it is settled or its lease runs out; under broadcast, copies go
        to the unleased consumers here (the script published it for the other brokers)."""
        if consumer.gone or self._queues.get(queue) is not state:
            self._release_unsent(queue, batch.messages)  # it left while the batch was taken
            return
        for message in batch.messages:
            timer = self.reactor.callLater(
                message.lease, self._lease_ran_out, queue, message.receipt
            )
            consumer.held[message.receipt] = (message, timer)
            state.holders[message.receipt] = consumer
            consumer.send(message)
            if batch.policy == "broadcast":
                copy = Message(message.key, message.value)  # no receipt: not theirs to ack
                for other in self._unleased(state):
                    other.send(copy)

    def settle(self, queue: str, receipts: list[str]) -> None:
        """Leases were acked or released (by anyone, on any broker): the consumers that
        held them here may take more."""
        state = self._queues.get(queue)
        if state is None:
            return
        freed = False
        for receipt in receipts:
            consumer = state.holders.pop(receipt, None)
            if consumer is not None:
                freed = consumer.forget(receipt) or freed
        if freed:
            self.wake(queue)

    def _lease_ran_out(self, queue: str, receipt: str) -> None:
        """A stream's lease ended unsettled: the message went back (lease sweeps, or the
        next take); the slot is free again."""
        state = self._queues.get(queue)
        consumer = state.holders.pop(receipt, None) if state else None
        if consumer is not None and consumer.forget(receipt):
            log.info("lease {receipt} of {kind} consumer {peer} ran out unacknowledged",
                     receipt=receipt, kind=consumer.kind, peer=consumer.peer)  # fmt: skip
            self.wake(queue)

    def _release_held(
        self, queue: str, state: _QueueConsumers | None, consumer: StreamConsumer
    ) -> None:
        """A leased consumer is gone: what it held goes back to the head of the queue now
        (what it never got does not count as a delivery)."""
        if not consumer.held:
            return
        if state is not None:
            for receipt in consumer.held:
                state.holders.pop(receipt, None)
        written, unsent = consumer.let_go_leases()
        if written:
            self._keep_track(defer.ensureDeferred(self._release(queue, written, True)))
        if unsent:
            self._keep_track(defer.ensureDeferred(self._release(queue, unsent, False)))

    def _release_unsent(self, queue: str, messages: list[LeasedMessage]) -> None:
        receipts = [message.receipt for message in messages]
        if receipts:
            self._keep_track(defer.ensureDeferred(self._release(queue, receipts, False)))

    async def _release(self, queue: str, receipts: list[str], delivered: bool) -> None:
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

    async def _deliver(
        self, queue: str, state: _QueueConsumers, batch: StreamBatch, ours: bool
    ) -> None:
        if batch.messages:
            leftovers = self._hand_out(state, batch, ours)
            self.metrics.taken(queue, STREAM, len(batch.messages) - len(leftovers))
            if leftovers:
                await self._requeue(queue, leftovers)

    def _late_batch(self, queue: str, batch: StreamBatch, ours: bool) -> None:
        """A batch Redis handed over after the drain gave up on it: deliver it now
        (while stopping, to nobody: it all goes back)."""
        state = None if self.stopping else self._queues.get(queue)
        d = defer.ensureDeferred(self._deliver(queue, state or _QueueConsumers(), batch, ours))
        self._keep_track(d).addErrback(
            lambda f: log.failure("late delivery to {queue} failed", f, queue=queue)
        )

    def _hears(self, queue: str) -> bool:
        """Whether this broker now hears what is published on ``queue``'s channel."""
        return self.notifications is not None and self.notifications.is_subscribed(
            self.engine.channel(queue)
        )

    def _hand_out(
        self, state: _QueueConsumers, batch: StreamBatch, ours: bool
    ) -> list[TakenMessage]:
        """Give each message out by policy; return those no consumer took.

        A message taken here goes back later too if every consumer holding it
        leaves before writing it (see Copies).
        """
        if batch.policy != "roundrobin" and batch.published_to > int(ours):
            # Other brokers hand this batch to their consumers too: never put it back.
            for message in batch.messages:
                for consumer in self._unleased(state):
                    consumer.send(message)
            return []
        leftovers = []
        for message in batch.messages:
            copies = Copies(message)
            # Held by the hand-out itself until every consumer had its turn, so that
            # one dropped meanwhile (too slow) cannot send it back while others get it.
            copies.waiting += 1
            if batch.policy == "roundrobin":
                self._send_to_next(state, message, copies)
            else:
                for consumer in self._unleased(state):
                    consumer.send(message, copies)
            if copies.let_go():
                leftovers.append(message)  # no consumer here took it
        return leftovers

    @staticmethod
    def _unleased(state: _QueueConsumers) -> list[StreamConsumer]:
        return [consumer for consumer in state.consumers if not consumer.leased]

    def _send_to_next(self, state: _QueueConsumers, message: TakenMessage, copies: Copies) -> bool:
        consumers = self._unleased(state)
        for _ in range(len(consumers)):
            index = state.next_index % len(consumers)
            state.next_index = index + 1
            consumer = consumers[index]
            if consumer.can_take_more() and consumer.send(message, copies):
                return True
        # Every consumer is busy: give it to a paused one rather than take it back.
        return any(not consumer.gone and consumer.send(message, copies) for consumer in consumers)

    def _deliver_published(self, queue: str, payload: str) -> None:
        try:
            batch = notices.decode_batch(payload)
        except notices.UnreadableBatch as exc:
            log.warn("ignored a batch notice on queue {queue}: {why}", queue=queue, why=exc)
            return
        if batch.origin == self.origin:
            return  # our own batch, handed out when we took it
        state = self._queues.get(queue)
        if state is None:
            return
        for key, body in batch.messages:
            message = Message(key, body)
            for consumer in self._unleased(state):
                consumer.send(message)

    async def _requeue(self, queue: str, messages: list[TakenMessage]) -> None:
        if not messages:
            return
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
