"""QueueEngine: every queue operation, each one atomic Redis call.

This is the only module that knows the Redis key layout. It is the layout of
the original RestMQ, so a Redis written by it is served as it is:

==========================  =======  =============================================
key                         type     holds
==========================  =======  =============================================
``QUEUESET``                set      the names of all queues
``<q>:UUID``                string   last message number of queue q
``<q>:<n>``                 string   the body of message n
``<q>:queue``               list     message keys, new ones LPUSHed, taken by RPOP
``<q>:queuepolicy``         string   ``1`` broadcast, ``2`` roundrobin (absent: 1)
``queuestat::<q>``          string   ``1`` started, ``0`` stopped
``<q>:<n>:refcount``        string   how often message n was peeked
``<q>:leased``              zset     keys handed out under a lease, scored by the
                                     lease deadline (ms, Redis ``TIME``)
``<q>:deliveries``          hash     message key -> times handed out under a lease
``<q>:maxdeliveries``       string   deliveries before a message is dead (absent: no limit)
``restmq:leasing``          zset     queues that have leases, scored by their earliest
                                     deadline (what the sweepers read)
``<q>:leasedstreams``       zset     brokers with leased streaming consumers of q ->
                                     until when (ms, Redis ``TIME``); expires unrefreshed
``restmq:brokers``          zset     ids of the brokers that have streaming consumers,
                                     scored by when their counts expire (ms)
``restmq:consumers:<id>``   hash     queue -> streaming consumers of broker ``<id>``;
                                     expires unless the broker writes it again
==========================  =======  =============================================

The leased-stream key exists only while some broker has leased streams of the queue.
The four before it exist only once leases (or max_deliveries) are used, so a queue used
without them keeps exactly the original keys. A leased message keeps its body until it is
acknowledged. The dead letters of ``q`` are the ordinary queue ``q:dead``: its list
holds the original keys ``q:<n>``, nothing is copied. ``restmq:leasing`` cannot be a
key of any queue: a queue's keys end in ``:queue``, ``:UUID``, ``:queuepolicy``,
``:leased``, ``:deliveries``, ``:maxdeliveries``, ``:leasedstreams``, ``:<n>`` or
``:<n>:refcount``, or start with ``queuestat::``; neither can ``restmq:brokers`` nor
``restmq:consumers:<id>``, as a broker id is ``b`` and hex digits.

Besides keys, each queue has a pub/sub channel ``restmq:notify:<db>:<q>`` (``<db>``
the database number: channels are server-wide) on which the scripts announce
adds, purges and setting changes, so that every broker sharing the Redis can
wake its streaming consumers at once (restmq.engine.notices, docs/brokers.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.engine import notices
from restmq.engine.keyspace import STATUS_PREFIX
from restmq.engine.turn_batch import TurnBatcher
from restmq.errors import InvalidArgument
from restmq.operations import validation
from restmq.storage.client import LuaScript, RedisClient

QUEUESET = "QUEUESET"
NOTIFY_PREFIX = "restmq:notify:"

POLICIES = {"broadcast": "1", "roundrobin": "2"}
_POLICY_NAMES = {number: name for name, number in POLICIES.items()}
STARTED, STOPPED = 1, 0
POP_BYTES = 16 * 1024 * 1024  # a batch pop stops once its bodies reach this
STREAM_BATCH_BYTES = 1024 * 1024  # likewise a batch taken for streaming consumers
LEASING = "restmq:leasing"  # the leasing index (see the key table above)
BROKERS = "restmq:brokers"  # brokers whose consumer counts are live
CONSUMERS_PREFIX = "restmq:consumers:"  # + broker id: its consumer counts
DEAD_SUFFIX = ":dead"  # the dead letters of q are the queue q:dead
LEASE_RETURN_LIMIT = 1000  # overdue leases one script call ends at most
SWEEP_QUEUES = 100  # queues one sweep step visits at most

log = Logger(namespace="restmq.engine")


def _lua_source(name: str) -> str:
    return resources.files("restmq.engine").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _script(name: str, *, writes: bool = True) -> LuaScript:
    return LuaScript(name, _lua_source(name), writes=writes)


_ADD = _script("add")
_PEEK = _script("peek", writes=False)  # only its peek counter changes
_DELETE = _script("delete")
_PURGE = _script("purge")
_SET_AND_NOTIFY = _script("set_and_notify")
_STATS = _script("stats", writes=False)
_QUEUE_STATS = _script("queue_stats", writes=False)
_REPORT_CONSUMERS = _script("report_consumers")
_QUEUE_INFO = _script("queue_info", writes=False)
_TAKE_FOR_STREAMS = _script("take_for_streams")
_REQUEUE = _script("requeue")
_STREAM_LEASERS = _script("stream_leasers")


def _text(value: Any) -> str:
    """A reply as text; bodies written by other clients may not be UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _is_count(text: str, most_digits: int) -> bool:
    """True if ``text`` is 1 to ``most_digits`` ASCII digits (no sign, no space)."""
    return 0 < len(text) <= most_digits and text.isascii() and text.isdigit()


def _batch_state(reply: list) -> dict[str, Any]:
    """The queue's state at the head of a streams batch reply (take_for_streams.lua,
    lease_for_streams.lua): started, policy, brokers published to, messages remaining."""
    return {
        "started": _int(reply[0]) == STARTED,
        "policy": _POLICY_NAMES.get(_text(reply[1]), "broadcast"),
        "published_to": _int(reply[2]),
        "remaining": _int(reply[3]),
    }


def _dead_length(value: Any) -> int | None:
    """A script's length of a dead-letter queue: empty when there is no such queue."""
    return None if value in ("", b"") else _int(value)


@dataclass(frozen=True)
class Message:
    key: str
    value: str
    count: int = 0  # how often the message was peeked (the JSON protocol's ``get``)


@dataclass(frozen=True)
class TakenMessage(Message):
    ttl_ms: int = -1  # what was left of its ttl when taken; -1: none


_new = object.__new__


def _taken(key: str, value: str, count: int, ttl_ms: int) -> TakenMessage:
    """A TakenMessage made without the frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field), which a batch pop would pay for every message."""
    message = _new(TakenMessage)
    fields = message.__dict__
    fields["key"], fields["value"], fields["count"], fields["ttl_ms"] = key, value, count, ttl_ms
    return message


@dataclass(frozen=True)
class StreamBatch:
    """What ``take_for_streams`` (or ``lease_for_streams``, its messages then
    LeasedMessage) got: the queue's state and the messages taken."""

    started: bool
    policy: str
    messages: list[TakenMessage]
    published_to: int  # brokers the batch was published to (broadcast), this one included
    remaining: int = 0  # messages still queued after the batch


@dataclass(frozen=True)
class QueueStats:
    name: str
    length: int
    status: int  # 1 started, 0 stopped
    policy: str  # "broadcast" or "roundrobin"
    leased: int = 0  # messages handed out under a lease and not yet acked
    dead: int | None = None  # length of the dead-letter queue <q>:dead; None: no such queue
    other_consumers: int = 0  # streaming consumers of the other brokers sharing the Redis


@dataclass(frozen=True)
class QueueCounts:
    """What /stats/<q> shows of a queue that only Redis knows."""

    length: int
    consumers_elsewhere: int  # streaming consumers of the other brokers sharing the Redis
    leased: int
    dead: int | None  # length of <q>:dead; None when there is no such queue


@dataclass(frozen=True)
class QueueInfo:
    stats: QueueStats
    last_number: int  # number of the newest message ever added
    newest_keys: list[str]


class QueueEngine:
    """Queue operations over a RedisClient. Names are validated here too."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._channel_prefix = f"{NOTIFY_PREFIX}{redis.dbid}:"
        # The acks of one queue made in one reactor turn go to Redis as one script call.
        self._acks: TurnBatcher[tuple[str, int], ReceiptResult] = TurnBatcher(
            redis.reactor, self._ack_now, validation.MAX_BATCH
        )
        # Names this broker process's consumer counts in Redis; never a queue key's end.
        self.broker_id = f"b{uuid.uuid4().hex[:16]}"

    # -- key layout ---------------------------------------------------------

    @staticmethod
    def _list(queue: str) -> str:
        return f"{queue}:queue"

    @staticmethod
    def _counter(queue: str) -> str:
        return f"{queue}:UUID"

    @staticmethod
    def _policy_key(queue: str) -> str:
        return f"{queue}:queuepolicy"

    @staticmethod
    def _status_key(queue: str) -> str:
        return f"{STATUS_PREFIX}:{queue}"

    def channel(self, queue: str) -> str:
        """The pub/sub channel on which changes to ``queue`` are announced.

        Channels are server-wide, not per database, so the database number is
        part of the name: brokers on other databases of the server never hear it.
        """
        return f"{self._channel_prefix}{queue}"

    def queue_of_channel(self, channel: str) -> str | None:
        prefix = self._channel_prefix
        return channel[len(prefix) :] if channel.startswith(prefix) else None

    # -- producing ----------------------------------------------------------

    async def add(self, queue: str, value: str, ttl: int | None = None) -> str:
        """Store one message; return its key (``<queue>:<n>``)."""
        return (await self.add_many(queue, [value], ttl))[0]

    async def add_many(self, queue: str, values: list[str], ttl: int | None = None) -> list[str]:
        """Store several messages in one atomic step; return their keys in order.

        The values are checked by restmq.operations.queue_operations; the name is checked here too,
        as every key is built from it.
        """
        validation.queue_name(queue)
        keys = await self.redis.run_script(
            _ADD,
            [QUEUESET, self._counter(queue), self._list(queue), self._status_key(queue)],
            [queue, ttl or 0, self.channel(queue), notices.ADD, *values],
            replicated=True,  # with --redis-wait-replicas: once replicas have them
        )
        return [_text(key) for key in keys]

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
        validation.queue_name(queue)
        flat = await self._run_lease_script(
            _POP,
            queue,
            [n, POP_BYTES, LEASE_RETURN_LIMIT],
            on_late=lambda reply: self._requeue_late(queue, self._popped(reply)),
        )
        return self._popped(flat)

    @staticmethod
    def _popped(flat: list) -> list[TakenMessage]:
        fields = iter(flat or ())
        return [
            _taken(
                key if key.__class__ is str else _text(key),
                value if value.__class__ is str else _text(value),
                count if count.__class__ is int else _int(count),
                ttl if ttl.__class__ is int else _int(ttl, -1),
            )
            for key, value, count, ttl in zip(fields, fields, fields, fields, strict=False)
        ]

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
        validation.queue_name(queue)
        reply = await self.redis.run_script(_PEEK, [self._list(queue)])
        if not reply:
            return None
        return Message(_text(reply[0]), _text(reply[1]), _int(reply[2]))

    async def delete(self, queue: str, key: str) -> bool:
        """Delete one message of ``queue`` by its key; True if it was there."""
        validation.queue_name(queue)
        if not isinstance(key, str) or not self._is_message_key(queue, key):
            raise InvalidArgument(f"{str(key)[:80]!r} is not a message key of queue {queue!r}")
        keys = [self._list(queue), key, self._leased(queue), self._deliveries(queue)]
        self._acks.flush(queue)  # acks made earlier reach Redis first
        return bool(await self.redis.run_script(_DELETE, keys))

    async def purge(self, queue: str) -> int:
        """Delete every pending and leased message of ``queue``; return how many there were."""
        validation.queue_name(queue)
        keys = [self._list(queue), self._leased(queue), self._deliveries(queue), LEASING]
        args = [self.channel(queue), queue, notices.PURGE]
        self._acks.flush(queue)  # acks made earlier reach Redis first
        return _int(await self.redis.run_script(_PURGE, keys, args))

    # -- settings -----------------------------------------------------------

    async def length(self, queue: str) -> int:
        validation.queue_name(queue)
        return _int(await self.redis.execute("LLEN", self._list(queue)))

    async def get_policy(self, queue: str) -> str:
        validation.queue_name(queue)
        stored = await self.redis.execute("GET", self._policy_key(queue))
        return _POLICY_NAMES.get(_text(stored), "broadcast")

    async def set_policy(self, queue: str, policy: str) -> str:
        validation.queue_name(queue)
        if policy not in POLICIES:
            raise InvalidArgument(
                f"invalid policy {str(policy)[:40]!r}: use broadcast or roundrobin"
            )
        await self.redis.run_script(
            _SET_AND_NOTIFY,
            [self._policy_key(queue)],
            [POLICIES[policy], self.channel(queue), notices.POLICY],
        )
        return policy

    async def get_status(self, queue: str) -> int:
        """1 when the queue delivers to streaming consumers, 0 when stopped."""
        validation.queue_name(queue)
        stored = await self.redis.execute("GET", self._status_key(queue))
        return STOPPED if _text(stored) == "0" else STARTED

    async def set_status(self, queue: str, started: bool) -> int:
        validation.queue_name(queue)
        status = STARTED if started else STOPPED
        await self.redis.run_script(
            _SET_AND_NOTIFY,
            [self._status_key(queue)],
            [status, self.channel(queue), notices.START if started else notices.STOP],
        )
        return status

    # -- listings -----------------------------------------------------------

    async def ping(self) -> None:
        """Returns when Redis answers a PING; raises what stopped it otherwise."""
        await self.redis.execute("PING")

    async def queues(self) -> list[str]:
        return sorted(_text(name) for name in await self.redis.execute("SMEMBERS", QUEUESET))

    async def stats(self) -> list[QueueStats]:
        """Length, status, policy, leases and dead letters of every queue, in one call."""
        flat = await self.redis.run_script(
            _STATS,
            [QUEUESET, BROKERS],
            [
                self._status_key(""),
                ":queue",
                ":queuepolicy",
                ":leased",
                DEAD_SUFFIX,
                CONSUMERS_PREFIX,
                self.broker_id,
            ],
        )
        return [
            QueueStats(
                name=_text(flat[i]),
                length=_int(flat[i + 1]),
                status=STOPPED if _text(flat[i + 2]) == "0" else STARTED,
                policy=_POLICY_NAMES.get(_text(flat[i + 3]), "broadcast"),
                leased=_int(flat[i + 4]),
                dead=_dead_length(flat[i + 5]),
                other_consumers=_int(flat[i + 6]),
            )
            for i in range(0, len(flat or ()), 7)
        ]

    async def queue_counts(self, queue: str) -> QueueCounts:
        """The /stats/<q> figures: length, leases, dead letters and the streaming
        consumers other brokers serve on the queue, in one call."""
        validation.queue_name(queue)
        dead_queue = self._dead_queue(queue)
        reply = await self.redis.run_script(
            _QUEUE_STATS,
            [self._list(queue), BROKERS, self._leased(queue), QUEUESET, self._list(dead_queue)],
            [CONSUMERS_PREFIX, self.broker_id, queue, dead_queue],
        )
        return QueueCounts(
            length=_int(reply[0]),
            consumers_elsewhere=_int(reply[1]),
            leased=_int(reply[2]),
            dead=_dead_length(reply[3]),
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
            _REPORT_CONSUMERS, [BROKERS, CONSUMERS_PREFIX + self.broker_id], args
        )
        return bool(_int(reply))

    async def info(self, queue: str, newest: int = 10) -> QueueInfo:
        """One queue's stats, its message counter and its ``newest`` pending keys."""
        validation.queue_name(queue)
        reply = await self.redis.run_script(
            _QUEUE_INFO,
            [
                self._list(queue),
                self._status_key(queue),
                self._policy_key(queue),
                self._counter(queue),
                self._leased(queue),
                QUEUESET,
                self._list(self._dead_queue(queue)),
            ],
            [newest, self._dead_queue(queue)],
        )
        stats = QueueStats(
            name=queue,
            length=_int(reply[0]),
            status=STOPPED if _text(reply[1]) == "0" else STARTED,
            policy=_POLICY_NAMES.get(_text(reply[2]), "broadcast"),
            leased=_int(reply[4]),
            dead=_dead_length(reply[5]),
        )
        return QueueInfo(stats, _int(reply[3]), [_text(key) for key in reply[6:]])

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
            _TAKE_FOR_STREAMS,
            [
                self._list(queue),
                self._status_key(queue),
                self._policy_key(queue),
                self._deliveries(queue),
                self._leased_streams(queue),
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
            on_late=None if on_late is None else lambda late: on_late(self._stream_batch(late)),
        )
        return self._stream_batch(reply)

    @staticmethod
    def _stream_batch(reply: list) -> StreamBatch:
        messages = [
            TakenMessage(_text(reply[i]), _text(reply[i + 1]), 0, _int(reply[i + 2], -1))
            for i in range(4, len(reply), 3)
        ]
        return StreamBatch(messages=messages, **_batch_state(reply))

    @staticmethod
    def _leased_streams(queue: str) -> str:
        return f"{queue}:leasedstreams"

    async def mark_leased_streams(self, queues: Sequence[str], broker: str, ttl_ms: int) -> None:
        """Say, for ``ttl_ms``, that ``broker`` has leased streaming consumers of ``queues``
        (one call for all); ``ttl_ms == 0`` withdraws it. Under broadcast no broker takes
        batches for unleased consumers of such a queue (see take_for_streams)."""
        if not queues:
            return
        await self.redis.run_script(
            _STREAM_LEASERS,
            [self._leased_streams(queue) for queue in queues],
            [broker, ttl_ms, notices.ADD, *(self.channel(queue) for queue in queues)],
        )

    async def requeue(self, queue: str, messages: list[TakenMessage]) -> None:
        """Put taken messages back at the head of ``queue``, in order, ttl kept."""
        if not messages:
            return
        args: list[Any] = [self.channel(queue), notices.ADD]
        for message in messages:
            args += [message.key, message.value, message.ttl_ms]
        await self.redis.run_script(_REQUEUE, [self._list(queue)], args)

    # -- leases (at-least-once delivery) ------------------------------------
    #
    # A lease hands a message out without deleting it: the taker acks it with the
    # receipt it got (``<key>@<deliveries>``), or the lease runs out and the message
    # goes back to the head of its queue, or to the dead letters ``<q>:dead`` once it
    # was handed out max_deliveries times. A script touches only the leases its
    # receipts name, except ``lease``, ``lease_for_streams`` and ``pop_many`` (which
    # first end the queue's overdue leases) and the sweeps. Times come from Redis
    # ``TIME``, so brokers with different clocks agree on when a lease runs out.

    @staticmethod
    def _leased(queue: str) -> str:
        return f"{queue}:leased"

    @staticmethod
    def _deliveries(queue: str) -> str:
        return f"{queue}:deliveries"

    @staticmethod
    def _max_deliveries_key(queue: str) -> str:
        return f"{queue}:maxdeliveries"

    @staticmethod
    def _dead_queue(queue: str) -> str:
        return f"{queue}{DEAD_SUFFIX}"

    @staticmethod
    def _is_message_key(queue: str, key: str) -> bool:
        """True if ``key`` names a message ``queue`` may hold.

        That is ``<queue>:<n>``; a dead-letter queue ``q:dead`` also holds the
        original keys ``q:<n>`` of the queue its messages died in.
        """
        owner, colon, number = key.rpartition(":")
        if not colon or not _is_count(number, len(number)):
            return False
        while owner != queue:
            if not queue.endswith(DEAD_SUFFIX):
                return False
            queue = queue[: -len(DEAD_SUFFIX)]
        return True

    def _receipt(self, queue: str, receipt: object) -> tuple[str, int]:
        """The message key and delivery count a receipt names; InvalidArgument if it is
        not a receipt of ``queue``."""
        if isinstance(receipt, str) and len(receipt) <= 2 * validation.MAX_QUEUE_NAME:
            key, at, count = receipt.rpartition("@")
            if at and _is_count(count, 9) and self._is_message_key(queue, key):
                return key, int(count)
        raise InvalidArgument(f"{str(receipt)[:80]!r} is not a receipt of queue {queue!r}")

    def _receipts(self, queue: str, receipts: str | Sequence[str]) -> list[tuple[str, int]]:
        if isinstance(receipts, str):
            receipts = [receipts]
        if not receipts:
            raise InvalidArgument("a receipt is required")
        if len(receipts) > validation.MAX_BATCH:
            raise InvalidArgument(f"at most {validation.MAX_BATCH} receipts per request")
        return [self._receipt(queue, receipt) for receipt in receipts]

    def _lease_args(self, queue: str) -> list[Any]:
        """KEYS and the first ARGV every lease script takes (see lua/lease_lib.lua)."""
        return [QUEUESET, LEASING, self._status_key(""), self._channel_prefix, notices.ADD, queue]

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
        validation.queue_name(queue)
        seconds = validation.lease_seconds(seconds)
        n = validation.batch_size(n)

        def release_late(reply: list) -> None:
            taken = self._leased_messages(reply, seconds)
            if taken:
                d = defer.ensureDeferred(
                    self.release(queue, [m.receipt for m in taken], delivered=False)
                )
                d.addErrback(lambda f: log.failure("could not release leases of {q}", f, q=queue))

        reply = await self._run_lease_script(
            _LEASE, queue, [seconds * 1000, n, POP_BYTES, LEASE_RETURN_LIMIT], release_late
        )
        return self._leased_messages(reply, seconds)

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
            queue,
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
        late = None if on_late is None else lambda r: on_late(self._leased_batch(r, seconds))
        reply = await self._run_lease_script(_LEASE_FOR_STREAMS, queue, args, late)
        return self._leased_batch(reply, seconds)

    @staticmethod
    def _leased_batch(reply: list, seconds: int) -> StreamBatch:
        deadline = _int(reply[4])
        messages = [
            _leased_message(
                _text(reply[i]),
                _text(reply[i + 1]),
                0,
                _int(reply[i + 2], -1),
                _int(reply[i + 3]),
                seconds,
                deadline,
            )
            for i in range(5, len(reply), 4)
        ]
        return StreamBatch(messages=messages, **_batch_state(reply))

    @staticmethod
    def _leased_messages(reply: list, seconds: int) -> LeaseBatch:
        deadline = _int(reply[0])
        messages = LeaseBatch(requeued=_int(reply[1]), dead=_int(reply[2]))
        append = messages.append
        for i in range(3, len(reply), 5):
            key, value, count, ttl, deliveries = reply[i : i + 5]
            append(
                _leased_message(
                    key if key.__class__ is str else _text(key),
                    value if value.__class__ is str else _text(value),
                    count if count.__class__ is int else _int(count),
                    ttl if ttl.__class__ is int else _int(ttl, -1),
                    deliveries if deliveries.__class__ is int else _int(deliveries),
                    seconds,
                    deadline,
                )
            )
        return messages

    async def ack(self, queue: str, receipts: str | Sequence[str]) -> list[ReceiptResult]:
        """Acknowledge leased messages by their receipts, in one script call.

        A message is deleted (body, lease, delivery count) only while the lease its
        receipt names is live; otherwise (ran out, the message was handed out again,
        acked already) its result is ``done=False`` and nothing changes. A receipt
        that is not one of ``queue`` is InvalidArgument and nothing is acked. With
        ``--redis-wait-replicas`` this answers once that many replicas have the acks.
        The acks of ``queue`` made in the same reactor turn share that script call
        (restmq.engine.turn_batch); it is sent once the turn is over.
        """
        validation.queue_name(queue)
        return await self._acks.submit(queue, self._receipts(queue, receipts))

    def send_waiting_acks(self) -> None:
        """Send the acks still gathered for this reactor turn now (a stop)."""
        self._acks.flush_all()

    async def _ack_now(self, queue: str, parsed: list[tuple[str, int]]) -> list[ReceiptResult]:
        """One ack script call for the receipts of one or more ``ack`` calls."""
        flat = [part for key, count in parsed for part in (key, count)]
        reply = await self._run_lease_script(_ACK, queue, [notices.SETTLED, *flat], replicated=True)
        return self._receipt_results(parsed, reply)

    async def extend(self, queue: str, receipt: str, seconds: int) -> bool:
        """Make the lease of ``receipt`` end ``seconds`` from now; False if it is gone.

        ``seconds == 0`` releases it: the message goes back to the head of the queue
        at once (next to be taken), or to ``<q>:dead`` if it was handed out
        max_deliveries times, as when a lease runs out.
        """
        validation.queue_name(queue)
        seconds = validation.lease_seconds(seconds, release=True)
        if seconds == 0:
            return (await self.release(queue, [receipt]))[0].done
        key, count = self._receipt(queue, receipt)
        reply = await self._run_lease_script(
            _CHANGE_LEASE, queue, [seconds * 1000, 1, notices.SETTLED, key, count]
        )
        return bool(_int(reply[0]))

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
        validation.queue_name(queue)
        parsed = self._receipts(queue, receipts)
        flat = [part for key, count in parsed for part in (key, count)]
        reply = await self._run_lease_script(
            _CHANGE_LEASE, queue, [0, int(delivered), notices.SETTLED, *flat]
        )
        return self._receipt_results(parsed, reply)

    @staticmethod
    def _receipt_results(parsed: list[tuple[str, int]], reply: list) -> list[ReceiptResult]:
        return [
            ReceiptResult(receipt=f"{key}@{count}", key=key, done=bool(_int(done)))
            for (key, count), done in zip(parsed, reply, strict=True)
        ]

    async def requeue_overdue(self, queue: str, limit: int = LEASE_RETURN_LIMIT) -> int:
        """End up to ``limit`` of ``queue``'s leases that ran out; return how many.

        The messages go back to the head of the queue (the lease that ran out first
        nearest the head, ties oldest message first), or to ``<q>:dead`` when handed
        out max_deliveries times; either queue's consumers are woken on every broker.
        When more than ``limit`` ran out, those that ran out last go first, so that
        the next call puts the earlier ones in front of them and the order holds.
        """
        validation.queue_name(queue)
        back, dead = await self._run_lease_script(_REQUEUE_OVERDUE, queue, [limit])
        return _int(back) + _int(dead)

    async def sweep_leases(
        self, max_queues: int = SWEEP_QUEUES, max_leases: int = LEASE_RETURN_LIMIT
    ) -> SweepResult:
        """One bounded sweep step over every queue: end leases that ran out.

        Visits at most ``max_queues`` queues whose earliest lease has run out (read
        from the leasing index) and ends at most ``max_leases`` leases, in one script
        call. ``more`` says that overdue leases remain: call again.
        """
        reply = await self.redis.run_script(
            _SWEEP_LEASES,
            [QUEUESET, LEASING],
            [self._status_key(""), self._channel_prefix, notices.ADD, max_queues, max_leases],
        )
        ended = tuple(
            LeasesEnded(_text(reply[i]), _int(reply[i + 1]), _int(reply[i + 2]))
            for i in range(4, len(reply), 3)
        )
        return SweepResult(
            *(_int(part) for part in reply[:3]), more=bool(_int(reply[3])), by_queue=ended
        )

    async def set_max_deliveries(self, queue: str, n: int) -> int:
        """Deliveries after which an unacked message goes to ``<q>:dead``; 0: no limit."""
        validation.queue_name(queue)
        n = validation.max_deliveries(n)
        if n:
            await self.redis.execute("SET", self._max_deliveries_key(queue), n)
        else:  # absent means no limit: an unlimited queue keeps the original keys
            await self.redis.execute("DEL", self._max_deliveries_key(queue))
        return n

    async def get_max_deliveries(self, queue: str) -> int:
        """The queue's max_deliveries; 0 when there is no limit."""
        validation.queue_name(queue)
        return _int(await self.redis.execute("GET", self._max_deliveries_key(queue)))


# -- leases: results and scripts -----------------------------------------


@dataclass(frozen=True)
class LeasedMessage(TakenMessage):
    """A message handed out under a lease: it stays stored until acked."""

    receipt: str = ""  # ``<key>@<deliveries>``: what ack, extend and release need
    deliveries: int = 0  # times handed out under a lease, this time included
    lease: int = 0  # seconds the lease lasts
    deadline_ms: int = 0  # when it runs out, ms since the epoch by Redis TIME


class LeaseBatch(list[LeasedMessage]):
    """The messages one lease call took, and what it did first with the queue's leases
    that had run out: ``requeued`` went back to the head, ``dead`` to ``<q>:dead``."""

    def __init__(self, messages: Sequence[LeasedMessage] = (), *, requeued: int = 0,
                 dead: int = 0) -> None:  # fmt: skip
        super().__init__(messages)
        self.requeued = requeued
        self.dead = dead


def _leased_message(
    key: str, value: str, count: int, ttl_ms: int, deliveries: int, lease: int, deadline_ms: int
) -> LeasedMessage:
    """A LeasedMessage made as ``_taken`` makes a TakenMessage; its receipt is
    ``<key>@<deliveries>``."""
    message = _new(LeasedMessage)
    fields = message.__dict__
    fields["key"], fields["value"], fields["count"], fields["ttl_ms"] = key, value, count, ttl_ms
    fields["receipt"], fields["deliveries"] = f"{key}@{deliveries}", deliveries
    fields["lease"], fields["deadline_ms"] = lease, deadline_ms
    return message


@dataclass(frozen=True)
class ReceiptResult:
    """What an ack or release did with one receipt."""

    receipt: str
    key: str
    done: bool  # False: the lease had run out, or the receipt is of an earlier delivery


@dataclass(frozen=True)
class LeasesEnded:
    """Leases of one queue that ran out in a sweep."""

    queue: str
    requeued: int
    dead: int


@dataclass(frozen=True)
class SweepResult:
    queues: int  # queues visited
    requeued: int  # messages put back at the head of their queue
    dead: int  # messages moved to their dead-letter queue
    more: bool = False  # leases that ran out remain: sweep again
    by_queue: tuple[LeasesEnded, ...] = ()  # the same, per queue whose leases ended


def _lease_script(name: str) -> LuaScript:
    """A lease script with the shared lease functions (lua/lease_lib.lua) in front."""
    return LuaScript(name, _lua_source("lease_lib") + "\n" + _lua_source(name))


_LEASE = _lease_script("lease")
_POP = _lease_script("pop")
_ACK = _lease_script("ack")
_CHANGE_LEASE = _lease_script("change_lease")
_REQUEUE_OVERDUE = _lease_script("requeue_overdue")
_SWEEP_LEASES = _lease_script("sweep_leases")
_LEASE_FOR_STREAMS = _lease_script("lease_for_streams")
