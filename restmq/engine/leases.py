"""Leases (at-least-once delivery): the engine's lease operations.

A lease hands a message out without deleting it: the taker acks it with the receipt
it got (``<key>@<deliveries>``), or the lease runs out and the message goes back to
the head of its queue, or to the dead letters ``<q>:dead`` once it was handed out
max_deliveries times. A script touches only the leases its receipts name, except
``lease``, ``lease_for_streams`` and ``pop_many`` (which first end the queue's overdue
leases) and the sweeps. Times come from Redis ``TIME``, so brokers with different
clocks agree on when a lease runs out.

Arguments are trusted: restmq.operations checks what clients send (receipts among it)
before it reaches here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.engine import keys, messages, notices, scripts
from restmq.engine.keys import KeyLayout
from restmq.engine.limits import (
    DUE_MOVE_LIMIT,
    LEASE_RETURN_LIMIT,
    MAX_BATCH,
    POP_BYTES,
    STREAM_BATCH_BYTES,
    SWEEP_QUEUES,
)
from restmq.engine.messages import LeaseBatch, ReceiptResult, StreamBatch, SweepResult
from restmq.engine.turn_batch import TurnBatcher
from restmq.storage.client import LuaScript, RedisClient

log = Logger(namespace="restmq.engine")


def _parsed(receipts: str | Sequence[str]) -> list[tuple[str, int]]:
    """The message key and delivery count each receipt names."""
    if isinstance(receipts, str):
        receipts = [receipts]
    parts = [messages.receipt_parts(receipt) for receipt in receipts]
    return [(key, int(deliveries)) for key, deliveries in parts]


class LeaseOperations:
    """The lease operations of QueueEngine (its base class), over a RedisClient."""

    def __init__(self, redis: RedisClient, layout: KeyLayout = keys.STANDALONE) -> None:
        self.redis = redis
        self.layout = layout
        self.scripts = scripts.CLUSTER if layout.clustered else scripts.STANDALONE
        self._channel_prefix = layout.channel_prefix(redis.dbid)
        # The acks of one queue made in one reactor turn go to Redis as one script call.
        self._acks: TurnBatcher[tuple[str, int], ReceiptResult] = TurnBatcher(
            redis.reactor, self._ack_now, MAX_BATCH
        )

    def _lease_args(self, queue: str) -> list[Any]:
        """KEYS and the first ARGV every lease script takes (see lua/lease_lib.lua)."""
        return [
            self.layout.registry(queue),
            self.layout.leasing(queue),
            keys.STATUS_KEYS,
            self._channel_prefix,
            notices.ADD,
            self.layout.stem(queue),
        ]

    async def _run_lease_script(
        self,
        script: LuaScript,
        queue: str,
        args: Sequence[Any] = (),
        on_late: Callable[[Any], object] | None = None,
        *,
        replicated: bool = False,
    ) -> Any:
        self._acks.flush(queue)  # acks made earlier reach Redis first
        common = self._lease_args(queue)
        return await self.redis.run_script(
            script, common[:2], [*common[2:], *args], on_late, replicated=replicated
        )

    async def lease(self, queue: str, seconds: int, n: int = 1) -> LeaseBatch:
        """Take up to ``n`` of the oldest live messages under a lease of ``seconds``.

        In the same script the queue's overdue leases end first (back to the head, or
        to ``<q>:dead``; the batch says how many), so leases run out even when no broker
        sweeps. The messages keep their bodies until acked; each comes with its receipt
        and how often it was handed out under a lease. The batch stops at ``POP_BYTES``
        of bodies (one message at least). Leases that Redis grants after the caller was
        told 503 are released at once, without counting as a delivery.
        """

        def release_late(reply: list) -> None:
            taken = messages.lease_batch(reply, seconds)
            if taken:
                d = defer.ensureDeferred(
                    self.release(queue, [m.receipt for m in taken], delivered=False)
                )
                d.addErrback(lambda f: log.failure("could not release leases of {q}", f, q=queue))

        reply = await self._run_lease_script(
            self.scripts.LEASE,
            queue,
            [seconds * 1000, n, POP_BYTES, LEASE_RETURN_LIMIT],
            release_late,
        )
        return messages.lease_batch(reply, seconds)

    async def lease_for_streams(
        self,
        queue: str,
        seconds: int,
        n: int,
        *,
        origin: str,
        max_bytes: int = STREAM_BATCH_BYTES,
        on_late: Callable[[StreamBatch], object] | None = None,
    ) -> StreamBatch:
        """Lease up to ``n`` messages for one leased streaming consumer, in one atomic step.

        As ``lease`` (overdue leases end first), but a stopped queue gives nothing, and
        under broadcast the batch is also published like a ``take_for_streams`` batch, for
        the unleased consumers of every broker. A batch Redis hands over after the caller
        gave up goes to ``on_late`` (whose job is to release it).
        """
        args = [
            self.layout.stem(queue),
            seconds * 1000,
            n,
            max_bytes,
            LEASE_RETURN_LIMIT,
            origin,
            notices.BATCH_VERSION,
            notices.VERSION_FIELD,
            notices.ORIGIN_FIELD,
            notices.MESSAGES_FIELD,
        ]
        late = (
            None if on_late is None else lambda r: on_late(messages.leased_stream_batch(r, seconds))
        )
        reply = await self._run_lease_script(self.scripts.LEASE_FOR_STREAMS, queue, args, late)
        return messages.leased_stream_batch(reply, seconds)

    async def ack(self, queue: str, receipts: str | Sequence[str]) -> list[ReceiptResult]:
        """Acknowledge leased messages by their receipts (1 to MAX_BATCH), in one script call.

        A message is deleted (body, lease, delivery count) only while the lease its
        receipt names is live; otherwise (ran out, the message was handed out again,
        acked already) its result is ``done=False`` and nothing changes. With
        ``--redis-wait-replicas`` this answers once that many replicas have the acks.
        The acks of ``queue`` made in the same reactor turn share that script call
        (restmq.engine.turn_batch); it is sent once the turn is over.
        """
        return await self._acks.submit(queue, _parsed(receipts))

    def send_waiting_acks(self) -> None:
        """Send the acks still gathered for this reactor turn now (a stop)."""
        self._acks.flush_all()

    async def _ack_now(self, queue: str, parsed: list[tuple[str, int]]) -> list[ReceiptResult]:
        """One ack script call for the receipts of one or more ``ack`` calls."""
        flat = [part for key, count in parsed for part in (key, count)]
        reply = await self._run_lease_script(
            self.scripts.ACK, queue, [notices.SETTLED, *flat], replicated=True
        )
        return messages.receipt_results(parsed, reply)

    async def extend(self, queue: str, receipt: str, seconds: int) -> bool:
        """Make the lease of ``receipt`` end ``seconds`` from now; False if it is gone.

        ``seconds == 0`` releases it: the message goes back to the head of the queue
        at once (next to be taken), or to ``<q>:dead`` if it was handed out
        max_deliveries times, as when a lease runs out.
        """
        if seconds == 0:
            return (await self.release(queue, [receipt]))[0].done
        [(key, count)] = _parsed(receipt)
        reply = await self._run_lease_script(
            self.scripts.CHANGE_LEASE, queue, [seconds * 1000, 1, notices.SETTLED, key, count]
        )
        return bool(messages.number(reply[0]))

    async def release(
        self, queue: str, receipts: str | Sequence[str], *, delivered: bool = True
    ) -> list[ReceiptResult]:
        """End the live leases of ``receipts`` now, in one script call.

        The messages go back to the head of the queue, the first receipt next to be
        taken (what a leased stream's consumer held when it went away). With
        ``delivered=False`` the messages never reached anyone (taken for a consumer
        that was gone, or granted after a timeout): the delivery is not counted, so
        it cannot send them to the dead letters.
        """
        parsed = _parsed(receipts)
        flat = [part for key, count in parsed for part in (key, count)]
        reply = await self._run_lease_script(
            self.scripts.CHANGE_LEASE, queue, [0, int(delivered), notices.SETTLED, *flat]
        )
        return messages.receipt_results(parsed, reply)

    async def requeue_overdue(self, queue: str, limit: int = LEASE_RETURN_LIMIT) -> int:
        """End up to ``limit`` of ``queue``'s leases that ran out; return how many.

        The messages go back to the head of the queue (the lease that ran out first
        nearest the head, ties oldest message first), or to ``<q>:dead`` when handed
        out max_deliveries times; either queue's consumers are woken on every broker.
        When more than ``limit`` ran out, those that ran out last go first, so that
        the next call puts the earlier ones in front of them and the order holds.
        """
        back, dead = await self._run_lease_script(self.scripts.REQUEUE_OVERDUE, queue, [limit])
        return messages.number(back) + messages.number(dead)

    async def sweep_leases(
        self,
        max_queues: int = SWEEP_QUEUES,
        max_leases: int = LEASE_RETURN_LIMIT,
        *,
        family: str = "",
        max_due: int = DUE_MOVE_LIMIT,
    ) -> SweepResult:
        """One bounded sweep step: end leases that ran out, move due delayed messages.

        Visits at most ``max_queues`` queues whose earliest lease has run out or whose
        earliest delayed message is due (read from the leasing index), ends at most
        ``max_leases`` leases and moves about ``max_due`` due messages at most (those an
        add stored at once move together) to the tail of their queue, announced on its
        channel, in one script call. ``more`` says that overdue leases or due messages
        remain: call again. On a Valkey Cluster
        each queue family has its own index (restmq.engine.keys.ClusterKeyLayout): the
        step then sweeps the family of ``family``; on one server, every queue.
        """
        reply = await self.redis.run_script(
            self.scripts.SWEEP_LEASES,
            [self.layout.registry(family), self.layout.leasing(family)],
            [
                keys.STATUS_KEYS,
                self._channel_prefix,
                notices.ADD,
                max_queues,
                max_leases,
                max_due,
            ],
        )
        result = messages.sweep_result(reply)
        if not self.layout.clustered:
            return result
        named = tuple(
            replace(ended, queue=self.layout.queue_of_stem(ended.queue))
            for ended in result.by_queue
        )
        return replace(result, by_queue=named)

    async def set_max_deliveries(self, queue: str, n: int) -> int:
        """Deliveries after which an unacked message goes to ``<q>:dead``; 0: no limit."""
        return await self._set_limit(keys.max_deliveries_key(self.layout.stem(queue)), n)

    async def get_max_deliveries(self, queue: str) -> int:
        """The queue's max_deliveries; 0 when there is no limit."""
        return await self._get_limit(keys.max_deliveries_key(self.layout.stem(queue)))

    # A queue's bound sits beside its max_deliveries: both are limits set at /p/<q>.
    async def set_max_length(self, queue: str, n: int) -> int:
        """Messages (pending and delayed) past which an add is refused; 0: no bound."""
        return await self._set_limit(keys.max_length_key(self.layout.stem(queue)), n)

    async def get_max_length(self, queue: str) -> int:
        """The queue's max_length; 0 when it has no bound."""
        return await self._get_limit(keys.max_length_key(self.layout.stem(queue)))

    async def _set_limit(self, key: str, n: int) -> int:
        if n:
            await self.redis.execute("SET", key, n, key=key)
        else:  # absent means no limit: a queue without one keeps the original keys
            await self.redis.execute("DEL", key, key=key)
        return n

    async def _get_limit(self, key: str) -> int:
        return messages.number(await self.redis.execute("GET", key, key=key))
