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
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.engine import keys, notices, scripts
from restmq.engine.leases import LeaseOperations
from restmq.engine.limits import LEASE_RETURN_LIMIT, POP_BYTES, STREAM_BATCH_BYTES
from restmq.engine.messages import (
    Message,
    QueueCounts,
    QueueInfo,
    QueueStats,
    StreamBatch,
    TakenMessage,
    dead_length,
    number,
    policy_name,
    popped,
    stream_batch,
    text,
)
from restmq.storage.client import RedisClient

log = Logger(namespace="restmq.engine")


def _status(stored: Any) -> int:
    """What a stored ``queuestat::<q>`` value means (absent: started)."""
    return keys.STOPPED if text(stored) == "0" else keys.STARTED


class QueueEngine(LeaseOperations):
    """Queue operations over a RedisClient."""

    def __init__(self, redis: RedisClient) -> None:
        super().__init__(redis)
        # Names this broker process's consumer counts in Redis; never a queue key's end.
        self.broker_id = f"b{uuid.uuid4().hex[:16]}"

    def channel(self, queue: str) -> str:
        """The pub/sub channel on which changes to ``queue`` are announced (its
        database's: see keys.channel_prefix)."""
        return f"{self._channel_prefix}{queue}"

    def queue_of_channel(self, channel: str) -> str | None:
        prefix = self._channel_prefix
        return channel[len(prefix) :] if channel.startswith(prefix) else None

    # -- producing ----------------------------------------------------------

    async def add(self, queue: str, value: str, ttl: int | None = None) -> str:
        """Store one message; return its key (``<queue>:<n>``)."""
        return (await self.add_many(queue, [value], ttl))[0]

    async def add_many(self, queue: str, values: list[str], ttl: int | None = None) -> list[str]:
        """Store several messages in one atomic step; return their keys in order."""
        added = await self.redis.run_script(
            scripts.ADD,
            [
                keys.QUEUESET,
                keys.counter_key(queue),
                keys.list_key(queue),
                keys.status_key(queue),
            ],
            [queue, ttl or 0, self.channel(queue), notices.ADD, *values],
            replicated=True,  # with --redis-wait-replicas: once replicas have them
        )
        return [text(key) for key in added]

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
            scripts.POP,
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
        """The oldest live message, left in place; its peek count goes up by one."""
        reply = await self.redis.run_script(scripts.PEEK, [keys.list_key(queue)])
        if not reply:
            return None
        return Message(text(reply[0]), text(reply[1]), number(reply[2]))

    async def delete(self, queue: str, key: str) -> bool:
        """Delete one message of ``queue`` by its key; True if it was there."""
        self._acks.flush(queue)  # acks made earlier reach Redis first
        return bool(
            await self.redis.run_script(
                scripts.DELETE,
                [keys.list_key(queue), key, keys.leased_key(queue), keys.deliveries_key(queue)],
            )
        )

    async def purge(self, queue: str) -> int:
        """Delete every pending and leased message of ``queue``; return how many there were."""
        queue_keys = [
            keys.list_key(queue),
            keys.leased_key(queue),
            keys.deliveries_key(queue),
            keys.LEASING,
        ]
        args = [self.channel(queue), queue, notices.PURGE]
        self._acks.flush(queue)  # acks made earlier reach Redis first
        return number(await self.redis.run_script(scripts.PURGE, queue_keys, args))

    # -- settings -----------------------------------------------------------

    async def length(self, queue: str) -> int:
        return number(await self.redis.execute("LLEN", keys.list_key(queue)))

    async def get_policy(self, queue: str) -> str:
        return policy_name(await self.redis.execute("GET", keys.policy_key(queue)))

    async def set_policy(self, queue: str, policy: str) -> str:
        """Set ``policy``, one of keys.POLICIES."""
        await self.redis.run_script(
            scripts.SET_AND_NOTIFY,
            [keys.policy_key(queue)],
            [keys.POLICIES[policy], self.channel(queue), notices.POLICY],
        )
        return policy

    async def get_status(self, queue: str) -> int:
        """1 when the queue delivers to streaming consumers, 0 when stopped."""
        return _status(await self.redis.execute("GET", keys.status_key(queue)))

    async def set_status(self, queue: str, started: bool) -> int:
        status = keys.STARTED if started else keys.STOPPED
        await self.redis.run_script(
            scripts.SET_AND_NOTIFY,
            [keys.status_key(queue)],
            [status, self.channel(queue), notices.START if started else notices.STOP],
        )
        return status

    # -- listings -----------------------------------------------------------

    async def ping(self) -> None:
        """Returns when Redis answers a PING; raises what stopped it otherwise."""
        await self.redis.execute("PING")

    async def queues(self) -> list[str]:
        return sorted(text(name) for name in await self.redis.execute("SMEMBERS", keys.QUEUESET))

    async def stats(self) -> list[QueueStats]:
        """Length, status, policy, leases and dead letters of every queue, in one call."""
        flat = await self.redis.run_script(
            scripts.STATS,
            [keys.QUEUESET, keys.BROKERS],
            [
                keys.STATUS_KEYS,
                keys.LIST_SUFFIX,
                keys.POLICY_SUFFIX,
                keys.LEASED_SUFFIX,
                keys.DEAD_SUFFIX,
                keys.CONSUMERS_PREFIX,
                self.broker_id,
            ],
        )
        return [
            QueueStats(
                name=text(flat[i]),
                length=number(flat[i + 1]),
                status=_status(flat[i + 2]),
                policy=policy_name(flat[i + 3]),
                leased=number(flat[i + 4]),
                dead=dead_length(flat[i + 5]),
                other_consumers=number(flat[i + 6]),
            )
            for i in range(0, len(flat or ()), 7)
        ]

    async def queue_counts(self, queue: str) -> QueueCounts:
        """The /stats/<q> figures: length, leases, dead letters and the streaming
        consumers other brokers serve on the queue, in one call."""
        dead_queue = keys.dead_queue(queue)
        reply = await self.redis.run_script(
            scripts.QUEUE_STATS,
            [
                keys.list_key(queue),
                keys.BROKERS,
                keys.leased_key(queue),
                keys.QUEUESET,
                keys.list_key(dead_queue),
            ],
            [keys.CONSUMERS_PREFIX, self.broker_id, queue, dead_queue],
        )
        return QueueCounts(
            length=number(reply[0]),
            consumers_elsewhere=number(reply[1]),
            leased=number(reply[2]),
            dead=dead_length(reply[3]),
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
        reply = await self.redis.run_script(
            scripts.REPORT_CONSUMERS, [keys.BROKERS, keys.consumers_key(self.broker_id)], args
        )
        return bool(number(reply))

    async def info(self, queue: str, newest: int = 10) -> QueueInfo:
        """One queue's stats, its message counter and its ``newest`` pending keys."""
        dead_queue = keys.dead_queue(queue)
        reply = await self.redis.run_script(
            scripts.QUEUE_INFO,
            [
                keys.list_key(queue),
                keys.status_key(queue),
                keys.policy_key(queue),
                keys.counter_key(queue),
                keys.leased_key(queue),
                keys.QUEUESET,
                keys.list_key(dead_queue),
            ],
            [newest, dead_queue],
        )
        stats = QueueStats(
            name=queue,
            length=number(reply[0]),
            status=_status(reply[1]),
            policy=policy_name(reply[2]),
            leased=number(reply[4]),
            dead=dead_length(reply[5]),
        )
        return QueueInfo(stats, number(reply[3]), [text(key) for key in reply[6:]])

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
        reply = await self.redis.run_script(
            scripts.TAKE_FOR_STREAMS,
            [
                keys.list_key(queue),
                keys.status_key(queue),
                keys.policy_key(queue),
                keys.deliveries_key(queue),
                keys.leased_streams_key(queue),
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
        await self.redis.run_script(
            scripts.STREAM_LEASERS,
            [keys.leased_streams_key(queue) for queue in queues],
            [broker, ttl_ms, notices.ADD, *(self.channel(queue) for queue in queues)],
        )

    async def requeue(self, queue: str, messages: list[TakenMessage]) -> None:
        """Put taken messages back at the head of ``queue``, in order, ttl kept."""
        if not messages:
            return
        args: list[Any] = [self.channel(queue), notices.ADD]
        for message in messages:
            args += [message.key, message.value, message.ttl_ms]
        await self.redis.run_script(scripts.REQUEUE, [keys.list_key(queue)], args)
