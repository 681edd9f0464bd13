"""The operations every front end calls: REST, JSON protocol, XML-RPC and the streams.

Each operation validates its arguments once (queue name, ttl, n, key, receipt, policy,
status word), makes one engine call and returns a typed result. Failures are
the errors of restmq.errors only; each front end renders results and errors in
its own wire format (restmq.web.shapes builds the bodies). A front end checks an
operation's arguments only where it must refuse before the operation runs (a
WebSocket handshake, the JSON protocol's path queue), and then with these same
rules (restmq.operations.validation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from restmq.delivery.consumers import ConsumerRegistry
from restmq.delivery.stream_consumer import StreamConsumer
from restmq.delivery.waiters import WaiterRegistry
from restmq.engine.keys import subscription_queue
from restmq.engine.messages import (
    LeasedMessage,
    Message,
    QueueInfo,
    ReceiptResult,
    TakenMessage,
)
from restmq.engine.queues import DEFAULT_IDEMPOTENCY_WINDOW, QueueEngine
from restmq.errors import (
    EmptyQueue,
    InvalidArgument,
    InvalidStatus,
    LeaseGone,
    StorageUnavailable,
)
from restmq.metrics import LEASE, POP, Metrics, Snapshot
from restmq.operations import validation
from restmq.operations.results import (
    Acked,
    Added,
    AllStats,
    Deleted,
    LeaseChanged,
    OneStats,
    Policy,
    Purged,
    QueueFigures,
    Status,
    StorageState,
    Subscription,
)
from restmq.operations.stats_feed import StatsFeed, StatsWatcher

#: A message value: text, or its UTF-8 bytes (a form field, a view of the request
#: body: never decoded, so a large message is held once on its way to Redis).
MessageValue = str | bytes | memoryview
MESSAGE_TYPES = (str, bytes, memoryview)

#: The words /control and XML-RPC use to start and stop delivery to streams.
STATUS_WORDS = {"start": True, "stop": False}


class Operations:
    """The broker's queue operations, shared by every front end."""

    def __init__(
        self,
        engine: QueueEngine,
        consumers: ConsumerRegistry,
        describe_storage: Callable[[], str],
        *,
        metrics: Metrics | None = None,
        waiters: WaiterRegistry | None = None,
        storage_state: Callable[[], StorageState] | None = None,
        idempotency_window: int = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> None:
        self.engine = engine
        # seconds an Idempotency-Key is remembered (--idempotency-window)
        self.idempotency_window = idempotency_window
        self.consumers = consumers
        self.describe_storage = describe_storage
        self.storage_state = storage_state
        # Live figures for the dashboard: one stats call per tick, whoever watches.
        self.stats_feed = StatsFeed(
            self.all_stats, consumers.reactor, heartbeat=consumers.heartbeat_interval
        )
        # one set of counters per broker: by default the one its consumers count in
        self.metrics = metrics if metrics is not None else consumers.metrics
        # long-poll requests parked until their queue has a message
        self.waiters = waiters if waiters is not None else WaiterRegistry(engine, consumers.reactor)

    # -- producing ----------------------------------------------------------

    async def add(
        self,
        queue: str,
        value: MessageValue,
        ttl: object = None,
        *,
        delay: object = None,
        idempotency_key: object = None,
    ) -> Added:
        """Add one message; ``ttl`` in seconds (text or a number), None for none; as
        ``add_many`` for the rest."""
        return await self.add_many(
            queue, [value], ttl, delay=delay, idempotency_key=idempotency_key
        )

    async def add_many(
        self,
        queue: str,
        values: Sequence[MessageValue],
        ttl: object = None,
        *,
        delay: object = None,
        idempotency_key: object = None,
    ) -> Added:
        """Add messages in one atomic step (1 to validation.MAX_BATCH of them).

        ``delay``: seconds before they can be taken (None: now). ``idempotency_key``: a
        key already used on the queue with the same payload answers the first add's keys
        again, ``replayed`` (IdempotencyConflict with another payload). QueueFull past a
        max_length."""
        queue = validation.queue_name(queue)
        seconds = validation.ttl_seconds(ttl)
        delay_seconds = validation.delay_seconds(delay)
        key = validation.idempotency_key(idempotency_key)
        if not values:
            raise InvalidArgument("no message to add")
        if len(values) > validation.MAX_BATCH:
            raise InvalidArgument(f"at most {validation.MAX_BATCH} messages per request")
        if not all(isinstance(value, MESSAGE_TYPES) for value in values):
            raise InvalidArgument("a message value must be text")
        keys = await self.engine.add_many(
            queue,
            list(values),
            seconds,
            delay=delay_seconds,
            idempotency_key=key,
            idempotency_window=self.idempotency_window,
        )
        if not keys.replayed:
            self.metrics.added(queue, len(keys))
            if not delay_seconds:
                # Our own waiters need not wait for the add notice to come back from Redis.
                self.waiters.wake(queue)
        return Added(queue, list(keys), replayed=keys.replayed)

    # -- consuming ----------------------------------------------------------

    async def pop(self, queue: str) -> Message:
        """Take the oldest message (its body is deleted); EmptyQueue when there is none."""
        queue = validation.queue_name(queue)
        message = await self.engine.pop(queue)
        if message is None:
            raise EmptyQueue(queue)
        self.metrics.taken(queue, POP)
        return message

    async def pop_many(self, queue: str, n: object) -> list[TakenMessage]:
        """Take up to ``n`` (1 to validation.MAX_BATCH) messages; an empty list when none."""
        queue = validation.queue_name(queue)
        messages = await self.engine.pop_many(queue, validation.batch_size(n))
        self.metrics.taken(queue, POP, len(messages))
        return messages

    async def lease(self, queue: str, seconds: object, n: object = 1) -> list[TakenMessage]:
        """Take up to ``n`` messages under a lease of ``seconds``; each has its receipt."""
        return await self.take(queue, n, lease=seconds)

    async def take(
        self,
        queue: str,
        n: object = None,
        lease: object = None,
        wait: object = None,
        gone: Callable[[], bool] = lambda: False,
    ) -> list[TakenMessage]:
        """Take up to ``n`` messages (1 when None), under a lease of ``lease`` seconds
        when given (LeasedMessage, each with its receipt); [] when there are none.

        With ``wait`` seconds (0 to validation.MAX_WAIT) an empty queue is waited on
        until a message arrives, oldest waiter first; [] when none came in time.
        ``gone()`` says the client left: what was taken for it goes back to the head.
        """
        queue = validation.queue_name(queue)
        count = 1 if n is None else validation.batch_size(n)
        seconds = None if lease is None else validation.lease_seconds(lease)
        patience = validation.wait_seconds(wait)

        messages: list[TakenMessage] = []
        if not patience or not self.waiters.has_waiters(queue):
            # Older waiters go first; without any, try at once.
            messages = await self._take_now(queue, count, seconds)
            if messages and gone():
                await self._give_back(queue, seconds, messages)
                return []
        if not messages and patience:
            messages = await self.waiters.wait(
                queue,
                lambda: self._take_now(queue, count, seconds),
                lambda taken: self._give_back(queue, seconds, taken),
                patience,
                gone,
            )
        self.metrics.taken(queue, POP if seconds is None else LEASE, len(messages))
        return messages

    async def _take_now(self, queue: str, count: int, seconds: int | None) -> list[TakenMessage]:
        if seconds is None:
            return await self.engine.pop_many(queue, count)
        batch = await self.engine.lease(queue, seconds, count)
        if batch.requeued or batch.dead:  # it ended the queue's overdue leases first
            self.metrics.leases_ended(queue, batch.requeued, batch.dead)
        return batch

    async def _give_back(
        self, queue: str, seconds: int | None, messages: list[TakenMessage]
    ) -> None:
        if seconds is None:
            await self.engine.requeue(queue, messages)
        else:  # nobody got them: the delivery does not count
            receipts = [m.receipt for m in messages if isinstance(m, LeasedMessage)]
            await self.engine.release(queue, receipts, delivered=False)

    async def ack(self, queue: str, receipts: Sequence[str]) -> list[Acked]:
        """Acknowledge leased messages by receipt (1 to validation.MAX_BATCH), in one step.

        Each message is deleted only while the lease its receipt names is live."""
        queue = validation.queue_name(queue)
        results = await self.engine.ack(
            queue, validation.receipts(queue, receipts, self.engine.stem(queue))
        )
        self.metrics.acked(queue, sum(result.done for result in results))
        return [self._acked(queue, result) for result in results]

    async def ack_one(self, queue: str, receipt: object) -> Acked:
        """Acknowledge one leased message; LeaseGone when its lease is gone."""
        queue = validation.queue_name(queue)
        receipt = validation.receipt(queue, receipt, self.engine.stem(queue))
        (result,) = await self.engine.ack(queue, (receipt,))
        if not result.done:
            raise LeaseGone(queue, receipt)
        self.metrics.acked(queue)
        return Acked(queue, result.key, True)

    async def change_lease(self, queue: str, receipt: object, lease: object) -> LeaseChanged:
        """Make the lease of ``receipt`` end ``lease`` seconds from now; 0 releases it (the
        message goes back to the head). LeaseGone when the lease is gone."""
        queue = validation.queue_name(queue)
        given = validation.receipt_text(receipt)
        if lease is None or lease == "":
            raise InvalidArgument(
                "lease is required with a receipt: seconds from now, or 0 to release"
            )
        seconds = validation.lease_seconds(lease, release=True)
        receipt = validation.receipt_of(queue, given, self.engine.stem(queue))
        if not await self.engine.extend(queue, receipt, seconds):
            raise LeaseGone(queue, receipt)
        return LeaseChanged(queue, receipt.rpartition("@")[0], receipt, seconds)

    async def release(self, queue: str, receipt: object) -> bool:
        """Release one lease now (the message goes back to the head); False when it is gone."""
        queue = validation.queue_name(queue)
        results = await self.engine.release(
            queue, [validation.receipt(queue, receipt, self.engine.stem(queue))]
        )
        return results[0].done

    @staticmethod
    def _acked(queue: str, result: ReceiptResult) -> Acked:
        return Acked(queue, result.key, result.done)

    async def peek(self, queue: str) -> Message:
        """The oldest message, left in place, its peek count raised; EmptyQueue when none."""
        queue = validation.queue_name(queue)
        message = await self.engine.peek(queue)
        if message is None:
            raise EmptyQueue(queue)
        return message

    async def delete(self, queue: str, key: object) -> Deleted:
        """Delete one message of ``queue`` by its key."""
        queue = validation.queue_name(queue)
        key = validation.message_key(queue, key, self.engine.stem(queue))
        return Deleted(queue, key, await self.engine.delete(queue, key))

    async def purge(self, queue: str) -> Purged:
        """Delete every pending message; every stream of the queue ends (on every broker)."""
        queue = validation.queue_name(queue)
        return Purged(queue, await self.engine.purge(queue))

    def open_stream(
        self, consumer: StreamConsumer, lease: object = None, prefetch: object = None
    ) -> None:
        """Register a streaming consumer of ``consumer.queue``; TooManyConsumers when full.

        With ``lease`` (seconds) it is a leased stream: each message comes under a lease,
        at most ``prefetch`` (default validation.DEFAULT_PREFETCH) unacknowledged.
        """
        validation.queue_name(consumer.queue)
        if lease is not None:
            window = validation.DEFAULT_PREFETCH if prefetch is None else prefetch
            consumer.use_lease(validation.lease_seconds(lease), validation.prefetch(window))
        elif prefetch is not None:
            raise InvalidArgument("prefetch needs lease: it is the leased stream's window")
        self.consumers.add(consumer)

    async def settle_stream(self, consumer: StreamConsumer, receipt: object, ack: bool) -> bool:
        """A leased stream's own ack (``ack``) or release to the head of the queue; False
        when the lease is gone. Its window opens at once, as the notice may come later."""
        queue = consumer.queue  # checked when the stream opened
        receipt = validation.receipt(queue, receipt, self.engine.stem(queue))
        if ack:
            results = await self.engine.ack(queue, [receipt])
            self.metrics.acked(queue, sum(result.done for result in results))
        else:
            results = await self.engine.release(queue, [receipt])
        # Refused too: the lease ran out, so the slot is not held any more.
        self.consumers.settle(queue, [receipt])
        return results[0].done

    def close_stream(self, consumer: StreamConsumer) -> None:
        self.consumers.remove(consumer)

    # -- settings -----------------------------------------------------------

    async def policy(self, queue: str) -> Policy:
        """The delivery policy, max_deliveries and max_length of ``queue``."""
        queue = validation.queue_name(queue)
        policy = await self.engine.get_policy(queue)
        deliveries = await self.engine.get_max_deliveries(queue)
        return Policy(queue, policy, deliveries, await self.engine.get_max_length(queue))

    async def configure(
        self, queue: str, policy: object, max_deliveries: object, max_length: object = None
    ) -> None:
        """``/p/<queue>``: set the policy, max_deliveries, max_length, or several (all
        checked first). Without max_deliveries or max_length the policy is required, as
        it always was."""
        queue = validation.queue_name(queue)
        if max_deliveries is None and max_length is None:
            await self.engine.set_policy(queue, validation.policy(policy))
            return
        deliveries = None if max_deliveries is None else validation.max_deliveries(max_deliveries)
        length = None if max_length is None else validation.max_length(max_length)
        if policy is not None:
            await self.engine.set_policy(queue, validation.known_policy(policy))
        if deliveries is not None:
            await self.engine.set_max_deliveries(queue, deliveries)
        if length is not None:
            await self.engine.set_max_length(queue, length)

    async def set_max_deliveries(self, queue: str, n: object) -> int:
        """Deliveries (0 to validation.MAX_DELIVERIES, 0: no limit) after which an
        unacknowledged message goes to ``<queue>:dead``."""
        queue = validation.queue_name(queue)
        return await self.engine.set_max_deliveries(queue, validation.max_deliveries(n))

    async def set_policy(self, queue: str, policy: object) -> Policy:
        """Set ``broadcast`` or ``roundrobin``."""
        queue = validation.queue_name(queue)
        return Policy(queue, await self.engine.set_policy(queue, validation.policy(policy)))

    async def status(self, queue: str) -> Status:
        queue = validation.queue_name(queue)
        return Status(queue, await self.engine.get_status(queue))

    async def set_status(self, queue: str, word: object) -> Status:
        """``start`` or ``stop`` delivery to streaming consumers; InvalidStatus otherwise."""
        queue = validation.queue_name(queue)
        if word not in STATUS_WORDS:
            raise InvalidStatus(word)
        return Status(queue, await self.engine.set_status(queue, STATUS_WORDS[word]))

    # -- subscriptions ------------------------------------------------------

    async def subscribe(self, queue: str, name: object) -> Subscription:
        """Create subscription ``name`` of ``queue`` (``changed``: it is new): from now on
        each message added to ``queue`` goes to the queue ``<queue>:<name>`` instead,
        and to every other subscription's."""
        queue, name = validation.subscription(queue, name)
        created = await self.engine.subscribe(queue, name)
        return Subscription(queue, name, subscription_queue(queue, name), created)

    async def unsubscribe(self, queue: str, name: object) -> Subscription:
        """End subscription ``name`` of ``queue`` (``changed``: it was there); its queue
        keeps its messages, an ordinary queue."""
        queue, name = validation.subscription(queue, name)
        ended = await self.engine.unsubscribe(queue, name)
        return Subscription(queue, name, subscription_queue(queue, name), ended)

    async def subscriptions(self, queue: str) -> list[str]:
        """The names of ``queue``'s subscriptions, sorted."""
        return await self.engine.subscriptions(validation.queue_name(queue))

    # -- figures ------------------------------------------------------------

    async def ping_storage(self) -> None:
        """Returns when Redis answers (for /health); raises what stopped it otherwise."""
        await self.engine.ping()

    async def length(self, queue: str) -> int:
        return await self.engine.length(validation.queue_name(queue))

    async def queues(self) -> list[str]:
        return await self.engine.queues()

    async def all_stats(self) -> AllStats:
        """Every queue's length, status, policy and consumers (one engine call).

        Consumers here are counted as they are now; those of other brokers as they
        last wrote them to Redis (about every second).
        """
        rows = [
            QueueFigures(s, s.other_consumers + self.consumers.count(s.name))
            for s in await self.engine.stats()
        ]
        state = self.storage_state() if self.storage_state is not None else None
        return AllStats(self.describe_storage(), rows, state)

    def watch_stats(self, watcher: StatsWatcher) -> None:
        """Send ``watcher`` the figures of ``all_stats`` now and whenever they change."""
        self.stats_feed.watch(watcher)

    def unwatch_stats(self, watcher: StatsWatcher) -> None:
        self.stats_feed.unwatch(watcher)

    async def stats(self, queue: str) -> OneStats:
        queue = validation.queue_name(queue)
        counts = await self.engine.queue_counts(queue)
        return OneStats(
            self.describe_storage(),
            queue,
            counts.length,
            counts.consumers_elsewhere + self.consumers.count(queue),
            leased=counts.leased,
            dead=counts.dead,
            delayed=counts.delayed,
        )

    async def info(self, queue: str, newest: int = 10) -> QueueInfo:
        """For /j/<queue>: stats, the message counter and the ``newest`` pending keys."""
        return await self.engine.info(validation.queue_name(queue), newest)

    async def metrics_snapshot(self) -> Snapshot:
        """What the gauges of /metrics show: every queue's length (one engine call, the
        one /stats/ makes), this broker's consumers, and whether Redis answered."""
        try:
            stats = await self.engine.stats()
        except StorageUnavailable:
            return Snapshot(storage_up=False, consumers=self.consumers.counts_by_transport())
        return Snapshot(
            storage_up=True,
            queue_lengths={queue.name: queue.length for queue in stats},
            consumers=self.consumers.counts_by_transport(),
        )
