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
==========================  =======  =============================================

Besides keys, each queue has a pub/sub channel ``restmq:notify:<db>:<q>`` (``<db>``
the database number: channels are server-wide) on which the scripts announce
adds, purges and setting changes, so that every broker sharing the Redis can
wake its streaming consumers at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq import validation
from restmq.errors import InvalidArgument
from restmq.keyspace import STATUS_PREFIX
from restmq.storage.client import LuaScript, RedisClient

QUEUESET = "QUEUESET"
NOTIFY_PREFIX = "restmq:notify:"

POLICIES = {"broadcast": "1", "roundrobin": "2"}
_POLICY_NAMES = {number: name for name, number in POLICIES.items()}
STARTED, STOPPED = 1, 0
POP_BYTES = 16 * 1024 * 1024  # a batch pop stops once its bodies reach this
STREAM_BATCH_BYTES = 1024 * 1024  # likewise a batch taken for streaming consumers

log = Logger(namespace="restmq.engine")


def _script(name: str, *, writes: bool = True) -> LuaScript:
    source = resources.files("restmq").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return LuaScript(name, source, writes=writes)


_ADD = _script("add")
_POP = _script("pop")
_PEEK = _script("peek", writes=False)  # only its peek counter changes
_DELETE = _script("delete")
_PURGE = _script("purge")
_SET_AND_NOTIFY = _script("set_and_notify")
_STATS = _script("stats", writes=False)
_QUEUE_INFO = _script("queue_info", writes=False)
_TAKE_FOR_STREAMS = _script("take_for_streams")
_REQUEUE = _script("requeue")


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


@dataclass(frozen=True)
class Message:
    key: str
    value: str
    count: int = 0  # how often the message was peeked (the JSON protocol's ``get``)


@dataclass(frozen=True)
class TakenMessage(Message):
    ttl_ms: int = -1  # what was left of its ttl when taken; -1: none


@dataclass(frozen=True)
class StreamBatch:
    """What ``take_for_streams`` got: the queue's state and the messages taken."""

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
        """Store several messages in one atomic step; return their keys in order."""
        validation.queue_name(queue)
        if not values:
            raise InvalidArgument("no message to add")
        if len(values) > validation.MAX_BATCH:
            raise InvalidArgument(f"at most {validation.MAX_BATCH} messages per request")
        for value in values:
            if not isinstance(value, str):
                raise InvalidArgument("a message value must be text")
        keys = await self.redis.run_script(
            _ADD,
            [QUEUESET, self._counter(queue), self._list(queue), self._status_key(queue)],
            [queue, ttl or 0, self.channel(queue), *values],
        )
        return [_text(key) for key in keys]

    # -- consuming ----------------------------------------------------------

    async def pop(self, queue: str) -> Message | None:
        """Take the oldest live message, deleting its body; None when empty."""
        messages = await self.pop_many(queue, 1)
        return messages[0] if messages else None

    async def pop_many(self, queue: str, n: int) -> list[TakenMessage]:
        """Take up to ``n`` of the oldest live messages in one atomic step.

        The batch stops early at ``POP_BYTES`` of bodies (one message at least).
        A pop that Redis answers after the client was told 503 has still taken
        its messages: they go back to the head of the queue.
        """
        validation.queue_name(queue)
        flat = await self.redis.run_script(
            _POP,
            [self._list(queue)],
            [n, POP_BYTES],
            on_late=lambda reply: self._requeue_late(queue, self._popped(reply)),
        )
        return self._popped(flat)

    @staticmethod
    def _popped(flat: list) -> list[TakenMessage]:
        return [
            TakenMessage(
                _text(flat[i]), _text(flat[i + 1]), _int(flat[i + 2]), _int(flat[i + 3], -1)
            )
            for i in range(0, len(flat or ()), 4)
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
        if not isinstance(key, str) or not re.fullmatch(re.escape(queue) + r":\d+", key):
            raise InvalidArgument(f"{str(key)[:80]!r} is not a message key of queue {queue!r}")
        return bool(await self.redis.run_script(_DELETE, [self._list(queue), key]))

    async def purge(self, queue: str) -> int:
        """Delete every pending message of ``queue``; return how many there were."""
        validation.queue_name(queue)
        return _int(await self.redis.run_script(_PURGE, [self._list(queue)], [self.channel(queue)]))

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
            [POLICIES[policy], self.channel(queue), "policy"],
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
            [status, self.channel(queue), "start" if started else "stop"],
        )
        return status

    # -- listings -----------------------------------------------------------

    async def queues(self) -> list[str]:
        return sorted(_text(name) for name in await self.redis.execute("SMEMBERS", QUEUESET))

    async def stats(self) -> list[QueueStats]:
        """Length, status and policy of every queue, in one call."""
        flat = await self.redis.run_script(
            _STATS, [QUEUESET], [self._status_key(""), ":queue", ":queuepolicy"]
        )
        return [
            QueueStats(
                name=_text(flat[i]),
                length=_int(flat[i + 1]),
                status=STOPPED if _text(flat[i + 2]) == "0" else STARTED,
                policy=_POLICY_NAMES.get(_text(flat[i + 3]), "broadcast"),
            )
            for i in range(0, len(flat or ()), 4)
        ]

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
            ],
            [newest],
        )
        stats = QueueStats(
            name=queue,
            length=_int(reply[0]),
            status=STOPPED if _text(reply[1]) == "0" else STARTED,
            policy=_POLICY_NAMES.get(_text(reply[2]), "broadcast"),
        )
        return QueueInfo(stats, _int(reply[3]), [_text(key) for key in reply[4:]])

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
        """Take a batch for streaming consumers in one atomic step (none if stopped).

        Under broadcast the batch is also published on the queue's channel as
        ``{"o": origin, "m": [key, body, ...]}`` for the other brokers. The batch
        stops at ``max_bytes`` of bodies (one message at least). A batch Redis
        hands over after the caller gave up goes to ``on_late``.
        """
        reply = await self.redis.run_script(
            _TAKE_FOR_STREAMS,
            [self._list(queue), self._status_key(queue), self._policy_key(queue)],
            [roundrobin_batch, broadcast_batch, self.channel(queue), origin, max_bytes],
            on_late=None if on_late is None else lambda late: on_late(self._stream_batch(late)),
        )
        return self._stream_batch(reply)

    @staticmethod
    def _stream_batch(reply: list) -> StreamBatch:
        messages = [
            TakenMessage(_text(reply[i]), _text(reply[i + 1]), 0, _int(reply[i + 2], -1))
            for i in range(4, len(reply), 3)
        ]
        return StreamBatch(
            started=_int(reply[0]) == STARTED,
            policy=_POLICY_NAMES.get(_text(reply[1]), "broadcast"),
            messages=messages,
            published_to=_int(reply[2]),
            remaining=_int(reply[3]),
        )

    async def requeue(self, queue: str, messages: list[TakenMessage]) -> None:
        """Put taken messages back at the head of ``queue``, in order, ttl kept."""
        if not messages:
            return
        args: list[Any] = [self.channel(queue)]
        for message in messages:
            args += [message.key, message.value, message.ttl_ms]
        await self.redis.run_script(_REQUEUE, [self._list(queue)], args)
