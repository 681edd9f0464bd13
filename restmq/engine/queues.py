"""QueueEngine: every queue operation, each one atomic Redis call.

The keys are those of restmq.engine.keys, the scripts those of restmq.engine.scripts;
the lease operations come from restmq.engine.leases (QueueEngine's base class), so
callers have this one object. Arguments are trusted: restmq.operations checks what
clients send before it reaches here, and the broker's own parts pass what they got
from the engine.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.engine import keys, notices
from restmq.engine.keys import KeyLayout
from restmq.engine.leases import LeaseOperations
from restmq.engine.limits import LEASE_RETURN_LIMIT, POP_BYTES, STREAM_BATCH_BYTES
from restmq.engine.messages import (
    AddedKeys,
    Message,
    QueueCounts,
    QueueInfo,
    QueueStats,
    StreamBatch,
    TakenMessage,
    added_keys,
    dead_length,
    number,
    policy_name,
    popped,
    stream_batch,
    text,
)
from restmq.engine.payload_digest import payload_digest
from restmq.engine.subscriptions import SubscriptionOperations
from restmq.storage.client import RedisClient

log = Logger(namespace="restmq.engine")


DEFAULT_IDEMPOTENCY_WINDOW = 86400  # seconds an idempotency key is remembered

#: families a process remembers having listed (keys.CLUSTER_QUEUES); past it, it forgets
#: them all and lists each again once
LISTED_FAMILIES_KEPT = 100_000


def _status(stored: Any) -> int:
    """What a stored ``queuestat::<q>`` value means (absent: started)."""
    return keys.STOPPED if text(stored) == "0" else keys.STARTED


class QueueEngine(LeaseOperations, SubscriptionOperations):
    """Queue operations over a RedisClient."""

    def __init__(self, redis: RedisClient, layout: KeyLayout = keys.STANDALONE) -> None:
        super().__init__(redis, layout)
        # Names this broker process's consumer counts in Redis; never a queue key's end.
        self.broker_id = f"b{uuid.uuid4().hex[:16]}"
        # Cluster layout: the queue families this process has listed in the families set
        # (keys.CLUSTER_QUEUES), so that an add touches that one key once per family.
        self._listed: set[str] = set()

    def channel(self, queue: str) -> str:
        """The pub/sub channel on which changes to ``queue`` are announced (its
        database's: see keys.channel_prefix; on a cluster, in the queue's slot)."""
        return f"{self._channel_prefix}{self.layout.stem(queue)}"

    def queue_of_channel(self, channel: str) -> str | None:
        prefix = self._channel_prefix
        if not channel.startswith(prefix):
            return None
        return self.layout.queue_of_stem(channel[len(prefix) :])

    def stem(self, queue: str) -> str:
        """What the keys of ``queue`` are built from; its message keys are ``<stem>:<n>``
        (the queue's name on one server; see restmq.engine.keys for a cluster)."""
        return self.layout.stem(queue)

    # -- producing ----------------------------------------------------------

    async def add(self, queue: str, value: str, ttl: int | None = None, **options: Any) -> str:
        """Store one message; return its key (``<queue>:<n>``). ``options``: as for
        ``add_many``."""
        return (await self.add_many(queue, [value], ttl, **options))[0]

    async def add_many(
        self,
        queue: str,
        values: list[str | bytes | memoryview],  # text, or its UTF-8 bytes
        ttl: int | None = None,
        *,
        delay: int = 0,
        idempotency_key: str | None = None,
        idempotency_window: int = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> AddedKeys:
        """Store several messages in one atomic step; return their keys in order.

        ``delay``: seconds before they can be taken (in ``<q>:delayed`` until then).
        ``idempotency_key``: an add with a key already used on the queue within
        ``idempotency_window`` seconds stores nothing and answers the keys the first one
        got (``replayed``), or raises IdempotencyConflict when its payload (values, ttl,
        delay) differs. While the queue has subscriptions the messages go to each of
        them instead. QueueFull when the queue or a subscription would pass its
        max_length; nothing is stored then.
        """
        if self.layout.clustered:
            await self._list_family(queue)
        stem = self.layout.stem(queue)
        digest = ""
        if idempotency_key is not None:
            digest = payload_digest(values, ttl or 0, delay)
        added = await self.redis.run_script(
            self.scripts.ADD,
            [
                self.layout.registry(queue),
                keys.counter_key(stem),
                keys.list_key(stem),
                keys.status_key(stem),
                self.layout.leasing(queue),
            ],
            [
                stem,
                ttl or 0,
                self._channel_prefix,
                notices.ADD,
                delay * 1000,
                idempotency_key or "",
                digest,
                idempotency_window,
                keys.STATUS_KEYS,
                *values,
            ],
            replicated=True,  # with --redis-wait-replicas: once replicas have them
        )
        return added_keys(queue, added, self.layout, idempotency_key)

    async def _list_family(self, queue: str) -> None:
        """Cluster layout: put the queue's family in the families set that /stats/ reads,
        once per process (before its first message, so a listed family may be empty but
        a family with messages is listed)."""
        family = keys.family_of(queue)
        if family in self._listed:
            return
        await self.redis.execute("SADD", keys.CLUSTER_QUEUES, family, key=keys.CLUSTER_QUEUES)
        if len(self._listed) >= LISTED_FAMILIES_KEPT:
            self._listed.clear()
        self._listed.add(family)

    # -- consuming ----------------------------------------------------------

    async def pop(self, queue: str) -> Message | None:
        """Take the oldest live message, deleting its body; None when empty."""
        messages = await self.pop_many(queue, 1)
        return messages[0] if messages else None

    async def pop_many(self, queue: str, n: int) -> list[TakenMessage]:
        """Take up to ``n`` of the oldest live messages in one atomic step.

        The queue's leases that ran out end first (back to the head, or to the dead
        letters), in the same script, as for a leased take.
        The batch stops early at ``POP_BYTES`` of bodies (one message at least).
        A pop that Redis answers after the client was told 503 has still taken
        its messages: they go back to the head of the queue.
        """
        flat = await self._run_lease_script(
            self.scripts.POP,
            queue,
            [n, POP_BYTES, LEASE_RETURN_LIMIT],
            on_late=lambda reply: self._requeue_late(queue, popped(reply)),
        )
        return popped(flat)

    def _requeue_late(self, queue: str, messages: list[TakenMessage]) -> None:
        if not messages:
            return
        log.warn("putting back {n} message(s) of {queue} popped after their request gave up",
                 n=len(messages), queue=queue)  # fmt: skip
        d = defer.ensureDeferred(self.requeue(queue, messages))
        d.addErrback(
            lambda f: log.failure("could not put back messages of {queue}", f, queue=queue)
        )

    async def peek(self, queue: str) -> Message | None:
        """The oldest live message, left in place; its peek count goes up by one. Due
        delayed messages go to the queue's tail first, as for every take."""
        stem = self.layout.stem(queue)
        reply = await self.redis.run_script(
            self.scripts.PEEK,
            [
                keys.list_key(stem),
                keys.delayed_key(stem),
                keys.leased_key(stem),
                self.layout.leasing(queue),
            ],
            [self.channel(queue), notices.ADD, stem],
        )
        if not reply:
            return None
        return Message(text(reply[0]), text(reply[1]), number(reply[2]))

    async def delete(self, queue: str, key: str) -> bool:
        """Delete one message of ``queue`` by its key; True if it was there."""
        self._acks.flush(queue)  # acks made earlier reach Redis first
        stem = self.layout.stem(queue)
        return bool(
            await self.redis.run_script(
                self.scripts.DELETE,
                [keys.list_key(stem), key, keys.leased_key(stem), keys.deliveries_key(stem)],
            )
        )

    async def purge(self, queue: str) -> int:
        """Delete every pending, leased and delayed message of ``queue``; return how many
        there were."""
        stem = self.layout.stem(queue)
        queue_keys = [
            keys.list_key(stem),
            keys.leased_key(stem),
            keys.deliveries_key(stem),
            self.layout.leasing(queue),
            keys.delayed_key(stem),
        ]
        args = [self.channel(queue), stem, notices.PURGE]
        self._acks.flush(queue)  # acks made earlier reach Redis first
        return number(await self.redis.run_script(self.scripts.PURGE, queue_keys, args))

    # -- settings -----------------------------------------------------------

    async def length(self, queue: str) -> int:
        key = keys.list_key(self.layout.stem(queue))
        return number(await self.redis.execute("LLEN", key, key=key))

    async def get_policy(self, queue: str) -> str:
        key = keys.policy_key(self.layout.stem(queue))
        return policy_name(await self.redis.execute("GET", key, key=key))

    async def set_policy(self, queue: str, policy: str) -> str:
        """Set ``policy``, one of keys.POLICIES."""
        await self.redis.run_script(
            self.scripts.SET_AND_NOTIFY,
            [keys.policy_key(self.layout.stem(queue))],
            [keys.POLICIES[policy], self.channel(queue), notices.POLICY],
        )
        return policy

    async def get_status(self, queue: str) -> int:
        """1 when the queue delivers to streaming consumers, 0 when stopped."""
        key = keys.status_key(self.layout.stem(queue))
        return _status(await self.redis.execute("GET", key, key=key))

    async def set_status(self, queue: str, started: bool) -> int:
        status = keys.STARTED if started else keys.STOPPED
        await self.redis.run_script(
            self.scripts.SET_AND_NOTIFY,
            [keys.status_key(self.layout.stem(queue))],
            [status, self.channel(queue), notices.START if started else notices.STOP],
        )
        return status

    # -- listings -----------------------------------------------------------

    async def ping(self) -> None:
        """Returns when Redis answers a PING; raises what stopped it otherwise."""
        await self.redis.execute("PING")

    async def queues(self) -> list[str]:
        if not self.layout.clustered:
            names = await self.redis.execute("SMEMBERS", keys.QUEUESET, key=keys.QUEUESET)
            return sorted(text(name) for name in names)
        families = await self.families()
        registries = [self.layout.registry(family) for family in families]
        replies = await _all([self.redis.execute("SMEMBERS", r, key=r) for r in registries])
        stems = (text(stem) for members in replies for stem in members)
        return sorted(self.layout.queue_of_stem(stem) for stem in stems)

    async def families(self) -> list[str]:
        """Cluster layout: every queue family listed (keys.CLUSTER_QUEUES)."""
        found = await self.redis.execute("SMEMBERS", keys.CLUSTER_QUEUES, key=keys.CLUSTER_QUEUES)
        return sorted(text(family) for family in found)

    def _stats_args(self) -> list[Any]:
        return [
            keys.STATUS_KEYS,
            keys.LIST_SUFFIX,
            keys.POLICY_SUFFIX,
            keys.LEASED_SUFFIX,
            keys.DEAD_SUFFIX,
            self.layout.consumers_prefix(),
            self.broker_id,
            keys.DELAYED_SUFFIX,
        ]

    async def stats(self) -> list[QueueStats]:
        """Length, status, policy, leases and dead letters of every queue, in one call
        (on a cluster: one per queue family, and one for the consumer counts)."""
        if not self.layout.clustered:
            flat = await self.redis.run_script(
                self.scripts.STATS, [keys.QUEUESET, keys.BROKERS], self._stats_args()
            )
            return _queue_stats(flat, lambda stem: stem)
        totals = defer.ensureDeferred(self.consumer_totals())
        families = await self.families()
        replies = await _all(
            [
                self.redis.run_script(
                    self.scripts.STATS, [self.layout.registry(family)], self._stats_args()
                )
                for family in families
            ]
        )
        elsewhere = await totals
        listed = [
            replace(stats, other_consumers=elsewhere.get(stats.name, 0))
            for flat in replies
            for stats in _queue_stats(flat, self.layout.queue_of_stem)
        ]
        return sorted(listed, key=lambda stats: stats.name)

    async def consumer_totals(self) -> dict[str, int]:
        """The streaming consumers the other brokers serve, by queue (their census)."""
        brokers = self.layout.brokers()
        flat = await self.redis.run_script(
            self.scripts.CONSUMER_TOTALS,
            [brokers],
            [self.layout.consumers_prefix(), self.broker_id],
        )
        return {text(flat[i]): number(flat[i + 1]) for i in range(0, len(flat or ()), 2)}

    async def queue_counts(self, queue: str) -> QueueCounts:
        """The /stats/<q> figures: length, leases, dead letters and the streaming
        consumers other brokers serve on the queue, in one call (on a cluster, where
        the consumer counts have their own slot, two at once)."""
        stem, dead_stem = self.layout.stem(queue), self.layout.stem(keys.dead_queue(queue))
        queue_keys = [
            keys.list_key(stem),
            keys.leased_key(stem),
            self.layout.registry(queue),
            keys.list_key(dead_stem),
        ]
        totals = None
        if self.layout.clustered:
            totals = defer.ensureDeferred(self.consumer_totals())
        else:
            queue_keys.append(keys.BROKERS)
        reply = await self.redis.run_script(
            self.scripts.QUEUE_STATS,
            queue_keys,
            [
                self.layout.consumers_prefix(),
                self.broker_id,
                queue,
                dead_stem,
                keys.delayed_key(stem),
            ],
        )
        elsewhere = number(reply[1])
        if totals is not None:
            elsewhere += (await totals).get(queue, 0)
        return QueueCounts(
            length=number(reply[0]),
            consumers_elsewhere=elsewhere,
            leased=number(reply[2]),
            dead=dead_length(reply[3]),
            delayed=number(reply[4]),
        )

    # -- consumer counts ----------------------------------------------------

    async def report_consumers(
        self, counts: Mapping[str, int], lifetime_ms: int, *, refresh: bool = False
    ) -> bool:
        """Record this broker's streaming consumers per queue for ``lifetime_ms``.

        ``refresh`` only keeps the counts written last alive; it returns False when
        they had expired already (write them in full then). Empty ``counts`` clear them.
        """
        args: list[Any] = [self.broker_id, lifetime_ms]
        if refresh:
            args.append("refresh")
        else:
            args.append("set")
            for queue, count in counts.items():
                args += [queue, count]
        census = [self.layout.brokers(), self.layout.consumers_prefix() + self.broker_id]
        reply = await self.redis.run_script(self.scripts.REPORT_CONSUMERS, census, args)
        return bool(number(reply))

    async def info(self, queue: str, newest: int = 10) -> QueueInfo:
        """One queue's stats, its message counter and its ``newest`` pending keys."""
        stem, dead_stem = self.layout.stem(queue), self.layout.stem(keys.dead_queue(queue))
        reply = await self.redis.run_script(
            self.scripts.QUEUE_INFO,
            [
                keys.list_key(stem),
                keys.status_key(stem),
                keys.policy_key(stem),
                keys.counter_key(stem),
                keys.leased_key(stem),
                self.layout.registry(queue),
                keys.list_key(dead_stem),
                keys.delayed_key(stem),
            ],
            [newest, dead_stem],
        )
        stats = QueueStats(
            name=queue,
            length=number(reply[0]),
            status=_status(reply[1]),
            policy=policy_name(reply[2]),
            leased=number(reply[4]),
            dead=dead_length(reply[5]),
            delayed=number(reply[6]),
        )
        return QueueInfo(stats, number(reply[3]), [text(key) for key in reply[7:]])

    # -- streaming consumers ------------------------------------------------

    async def take_for_streams(
        self,
        queue: str,
        *,
        roundrobin_batch: int,
        broadcast_batch: int,
        origin: str,
        max_bytes: int = STREAM_BATCH_BYTES,
        on_late: Callable[[StreamBatch], object] | None = None,
    ) -> StreamBatch:
        """Take a batch for streaming consumers in one atomic step (none if stopped,
        nor under broadcast while some broker has leased streams of the queue).

        Under broadcast the batch is also published on the queue's channel as
        ``{"v": 1, "o": origin, "m": [key, body, ...]}`` for the other brokers
        (restmq.engine.notices). The batch
        stops at ``max_bytes`` of bodies (one message at least). A batch Redis
        hands over after the caller gave up goes to ``on_late``.
        """
        stem = self.layout.stem(queue)
        reply = await self.redis.run_script(
            self.scripts.TAKE_FOR_STREAMS,
            [
                keys.list_key(stem),
                keys.status_key(stem),
                keys.policy_key(stem),
                keys.deliveries_key(stem),
                keys.leased_streams_key(stem),
                keys.delayed_key(stem),
                keys.leased_key(stem),
                self.layout.leasing(queue),
            ],
            [
                roundrobin_batch,
                broadcast_batch,
                self.channel(queue),
                origin,
                max_bytes,
                notices.BATCH_VERSION,
                notices.VERSION_FIELD,
                notices.ORIGIN_FIELD,
                notices.MESSAGES_FIELD,
                notices.ADD,
                stem,
            ],
            on_late=None if on_late is None else lambda late: on_late(stream_batch(late)),
        )
        return stream_batch(reply)

    async def mark_leased_streams(self, queues: Sequence[str], broker: str, ttl_ms: int) -> None:
        """Say, for ``ttl_ms``, that ``broker`` has leased streaming consumers of ``queues``
        (one call for all); ``ttl_ms == 0`` withdraws it. Under broadcast no broker takes
        batches for unleased consumers of such a queue (see take_for_streams)."""
        if not queues:
            return
        # On a cluster each queue's key is in its own slot: one call per queue then.
        groups = [[queue] for queue in queues] if self.layout.clustered else [list(queues)]
        await _all(
            [
                self.redis.run_script(
                    self.scripts.STREAM_LEASERS,
                    [keys.leased_streams_key(self.layout.stem(queue)) for queue in group],
                    [broker, ttl_ms, notices.ADD, *(self.channel(queue) for queue in group)],
                )
                for group in groups
            ]
        )

    async def requeue(self, queue: str, messages: list[TakenMessage]) -> None:
        """Put taken messages back at the head of ``queue``, in order, ttl kept."""
        if not messages:
            return
        args: list[Any] = [self.channel(queue), notices.ADD]
        for message in messages:
            args += [message.key, message.value, message.ttl_ms]
        await self.redis.run_script(
            self.scripts.REQUEUE, [keys.list_key(self.layout.stem(queue))], args
        )


def _queue_stats(flat: list | None, name_of: Callable[[str], str]) -> list[QueueStats]:
    """A stats script's reply; ``name_of`` turns the stems it lists into queue names."""
    return [
        QueueStats(
            name=name_of(text(flat[i])),
            length=number(flat[i + 1]),
            status=_status(flat[i + 2]),
            policy=policy_name(flat[i + 3]),
            leased=number(flat[i + 4]),
            dead=dead_length(flat[i + 5]),
            other_consumers=number(flat[i + 6]),
            delayed=number(flat[i + 7]),
        )
        for i in range(0, len(flat or ()), 8)
    ]


async def _all(calls: list[defer.Deferred]) -> list[Any]:
    """Every call's answer, in order; the first failure is raised as it was."""
    try:
        return await defer.gatherResults(calls, consumeErrors=True)
    except defer.FirstError as error:
        error.subFailure.raiseException()
