"""The operations every front end calls: REST, JSON protocol, XML-RPC and the streams.

Each operation validates its arguments once (queue name, ttl, n, key, policy,
status word), makes one engine call and returns a typed result. Failures are
the errors of restmq.errors only; each front end renders results and errors in
its own wire format (restmq.shapes builds the bodies) and never checks a
queue operation's arguments itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from restmq import validation
from restmq.consumers import ConsumerRegistry, StreamConsumer
from restmq.core import Message, QueueEngine, QueueInfo, QueueStats, TakenMessage
from restmq.errors import EmptyQueue, InvalidArgument, InvalidStatus
from restmq.stats_feed import StatsFeed, StatsWatcher

#: The words /control and XML-RPC use to start and stop delivery to streams.
STATUS_WORDS = {"start": True, "stop": False}


@dataclass(frozen=True)
class Added:
    queue: str
    keys: list[str]  # in the order the values were given

    @property
    def key(self) -> str:
        return self.keys[0]


@dataclass(frozen=True)
class Deleted:
    queue: str
    key: str
    deleted: bool  # False: no such message (taken already, or never added)


@dataclass(frozen=True)
class Purged:
    queue: str
    count: int  # messages that were pending


@dataclass(frozen=True)
class Policy:
    queue: str
    policy: str  # "broadcast" or "roundrobin"


@dataclass(frozen=True)
class Status:
    queue: str
    status: int  # 1 started, 0 stopped


@dataclass(frozen=True)
class QueueFigures:
    """One queue's line in /stats/: its stored stats and its streaming consumers on
    every broker (and worker) sharing the Redis."""

    stats: QueueStats
    consumers: int


@dataclass(frozen=True)
class AllStats:
    storage: str  # where Redis is and how many connections are up
    queues: list[QueueFigures]  # sorted by name


@dataclass(frozen=True)
class OneStats:
    storage: str
    queue: str
    length: int
    consumers: int  # streaming consumers of the queue on every broker sharing the Redis


class Operations:
    """The broker's queue operations, shared by every front end."""

    def __init__(
        self,
        engine: QueueEngine,
        consumers: ConsumerRegistry,
        describe_storage: Callable[[], str],
    ) -> None:
        self.engine = engine
        self.consumers = consumers
        self.describe_storage = describe_storage
        # Live figures for the dashboard: one stats call per tick, whoever watches.
        self.stats_feed = StatsFeed(
            self.all_stats, consumers.reactor, heartbeat=consumers.heartbeat_interval
        )

    # -- producing ----------------------------------------------------------

    async def add(self, queue: str, value: str, ttl: object = None) -> Added:
        """Add one message; ``ttl`` in seconds (text or a number), None for none."""
        return await self.add_many(queue, [value], ttl)

    async def add_many(self, queue: str, values: Sequence[str], ttl: object = None) -> Added:
        """Add messages in one atomic step (1 to validation.MAX_BATCH of them)."""
        queue = validation.queue_name(queue)
        seconds = validation.ttl_seconds(ttl)
        if not values:
            raise InvalidArgument("no message to add")
        if len(values) > validation.MAX_BATCH:
            raise InvalidArgument(f"at most {validation.MAX_BATCH} messages per request")
        if not all(isinstance(value, str) for value in values):
            raise InvalidArgument("a message value must be text")
        return Added(queue, await self.engine.add_many(queue, list(values), seconds))

    # -- consuming ----------------------------------------------------------

    async def pop(self, queue: str) -> Message:
        """Take the oldest message (its body is deleted); EmptyQueue when there is none."""
        queue = validation.queue_name(queue)
        message = await self.engine.pop(queue)
        if message is None:
            raise EmptyQueue(queue)
        return message

    async def pop_many(self, queue: str, n: object) -> list[TakenMessage]:
        """Take up to ``n`` (1 to validation.MAX_BATCH) messages; an empty list when none."""
        queue = validation.queue_name(queue)
        return await self.engine.pop_many(queue, validation.batch_size(n))

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
        if not isinstance(key, str) or not key:
            raise InvalidArgument("the key of a message is required, such as q:1")
        return Deleted(queue, key, await self.engine.delete(queue, key))

    async def purge(self, queue: str) -> Purged:
        """Delete every pending message; every stream of the queue ends (on every broker)."""
        queue = validation.queue_name(queue)
        return Purged(queue, await self.engine.purge(queue))

    def open_stream(self, consumer: StreamConsumer) -> None:
        """Register a streaming consumer of ``consumer.queue``; TooManyConsumers when full."""
        validation.queue_name(consumer.queue)
        self.consumers.add(consumer)

    def close_stream(self, consumer: StreamConsumer) -> None:
        self.consumers.remove(consumer)

    # -- settings -----------------------------------------------------------

    async def policy(self, queue: str) -> Policy:
        queue = validation.queue_name(queue)
        return Policy(queue, await self.engine.get_policy(queue))

    async def set_policy(self, queue: str, policy: object) -> Policy:
        """Set ``broadcast`` or ``roundrobin``."""
        queue = validation.queue_name(queue)
        if not isinstance(policy, str) or not policy:
            raise InvalidArgument("policy is required: broadcast or roundrobin")
        return Policy(queue, await self.engine.set_policy(queue, policy))

    async def status(self, queue: str) -> Status:
        queue = validation.queue_name(queue)
        return Status(queue, await self.engine.get_status(queue))

    async def set_status(self, queue: str, word: object) -> Status:
        """``start`` or ``stop`` delivery to streaming consumers; InvalidStatus otherwise."""
        queue = validation.queue_name(queue)
        if word not in STATUS_WORDS:
            raise InvalidStatus(word)
        return Status(queue, await self.engine.set_status(queue, STATUS_WORDS[word]))

    # -- figures ------------------------------------------------------------

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
        return AllStats(self.describe_storage(), rows)

    def watch_stats(self, watcher: StatsWatcher) -> None:
        """Send ``watcher`` the figures of ``all_stats`` now and whenever they change."""
        self.stats_feed.watch(watcher)

    def unwatch_stats(self, watcher: StatsWatcher) -> None:
        self.stats_feed.unwatch(watcher)

    async def stats(self, queue: str) -> OneStats:
        queue = validation.queue_name(queue)
        length, elsewhere = await self.engine.length_and_consumers(queue)
        consumers = elsewhere + self.consumers.count(queue)
        return OneStats(self.describe_storage(), queue, length, consumers)

    async def info(self, queue: str, newest: int = 10) -> QueueInfo:
        """For /j/<queue>: stats, the message counter and the ``newest`` pending keys."""
        return await self.engine.info(validation.queue_name(queue), newest)
