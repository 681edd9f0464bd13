"""What the engine's operations return, and how each is built from a script's reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from restmq.engine.keys import POLICY_NAMES, STARTED, KeyLayout
from restmq.errors import IdempotencyConflict, QueueFull


def text(value: Any) -> str:
    """A reply as text; bodies written by other clients may not be UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def number(value: Any, default: int = 0) -> int:
    """A reply as a whole number; ``default`` when it is none."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def policy_name(stored: Any) -> str:
    """The policy a stored ``<q>:queuepolicy`` value means (absent: broadcast)."""
    return POLICY_NAMES.get(text(stored), "broadcast")


def dead_length(value: Any) -> int | None:
    """A script's length of a dead-letter queue: empty when there is no such queue."""
    return None if value in ("", b"") else number(value)


def receipt_of(key: str, deliveries: int) -> str:
    """The receipt of a leased message: ``<key>@<deliveries>``."""
    return f"{key}@{deliveries}"


def receipt_parts(receipt: str) -> tuple[str, str]:
    """The message key and the delivery count (as text) a receipt is made of;
    the key is empty when there is no ``@``."""
    key, _, deliveries = receipt.rpartition("@")
    return key, deliveries


# -- adding -------------------------------------------------------------------


class AddedKeys(list[str]):
    """The keys an add stored, oldest first; ``replayed``: an idempotent add answered
    again (nothing stored this time)."""

    def __init__(self, keys: Sequence[str] = (), *, replayed: bool = False) -> None:
        super().__init__(keys)
        self.replayed = replayed


def added_keys(
    queue: str, reply: list, layout: KeyLayout, idempotency_key: str | None
) -> AddedKeys:
    """An add script's reply: the keys; or replayed keys, a conflict, a full queue."""
    head = text(reply[0]) if reply else ""
    if head == "=replayed":
        return AddedKeys([text(key) for key in reply[1:]], replayed=True)
    if head == "!conflict":
        raise IdempotencyConflict(queue, idempotency_key or "")
    if head == "!full":
        raise QueueFull(layout.queue_of_stem(text(reply[1])), number(reply[2]))
    return AddedKeys([text(key) for key in reply])


# -- messages ---------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    key: str
    value: str
    count: int = 0  # how often the message was peeked (the JSON protocol's ``get``)


@dataclass(frozen=True)
class TakenMessage(Message):
    ttl_ms: int = -1  # what was left of its ttl when taken; -1: none


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


@dataclass(frozen=True)
class StreamBatch:
    """What ``take_for_streams`` (or ``lease_for_streams``, its messages then
    LeasedMessage) got: the queue's state and the messages taken."""

    started: bool
    policy: str
    messages: list[TakenMessage]
    published_to: int  # brokers the batch was published to (broadcast), this one included
    remaining: int = 0  # messages still queued after the batch


_new = object.__new__


def taken_message(key: str, value: str, count: int, ttl_ms: int) -> TakenMessage:
    """A TakenMessage made without the frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field), which a batch pop would pay for every message."""
    message = _new(TakenMessage)
    fields = message.__dict__
    fields["key"], fields["value"], fields["count"], fields["ttl_ms"] = key, value, count, ttl_ms
    return message


def leased_message(
    key: str, value: str, count: int, ttl_ms: int, deliveries: int, lease: int, deadline_ms: int
) -> LeasedMessage:
    """A LeasedMessage made as ``taken_message`` makes a TakenMessage; its receipt is
    ``<key>@<deliveries>``."""
    message = _new(LeasedMessage)
    fields = message.__dict__
    fields["key"], fields["value"], fields["count"], fields["ttl_ms"] = key, value, count, ttl_ms
    fields["receipt"], fields["deliveries"] = receipt_of(key, deliveries), deliveries
    fields["lease"], fields["deadline_ms"] = lease, deadline_ms
    return message


def popped(flat: list) -> list[TakenMessage]:
    """The messages of a pop reply: key, body, peek count, ttl left, for each."""
    fields = iter(flat or ())
    return [
        taken_message(
            key if key.__class__ is str else text(key),
            value if value.__class__ is str else text(value),
            count if count.__class__ is int else number(count),
            ttl if ttl.__class__ is int else number(ttl, -1),
        )
        for key, value, count, ttl in zip(fields, fields, fields, fields, strict=False)
    ]


def lease_batch(reply: list, seconds: int) -> LeaseBatch:
    """A lease reply: the deadline, the overdue leases it ended, then the messages."""
    deadline = number(reply[0])
    messages = LeaseBatch(requeued=number(reply[1]), dead=number(reply[2]))
    append = messages.append
    for i in range(3, len(reply), 5):
        key, value, count, ttl, deliveries = reply[i : i + 5]
        append(
            leased_message(
                key if key.__class__ is str else text(key),
                value if value.__class__ is str else text(value),
                count if count.__class__ is int else number(count),
                ttl if ttl.__class__ is int else number(ttl, -1),
                deliveries if deliveries.__class__ is int else number(deliveries),
                seconds,
                deadline,
            )
        )
    return messages


def _batch_state(reply: list) -> dict[str, Any]:
    """The queue's state at the head of a streams batch reply (take_for_streams.lua,
    lease_for_streams.lua): started, policy, brokers published to, messages remaining."""
    return {
        "started": number(reply[0]) == STARTED,
        "policy": policy_name(reply[1]),
        "published_to": number(reply[2]),
        "remaining": number(reply[3]),
    }


def stream_batch(reply: list) -> StreamBatch:
    """A take_for_streams reply."""
    messages = [
        TakenMessage(text(reply[i]), text(reply[i + 1]), 0, number(reply[i + 2], -1))
        for i in range(4, len(reply), 3)
    ]
    return StreamBatch(messages=messages, **_batch_state(reply))


def leased_stream_batch(reply: list, seconds: int) -> StreamBatch:
    """A lease_for_streams reply: the queue's state, the deadline, then the messages."""
    deadline = number(reply[4])
    messages = [
        leased_message(
            text(reply[i]),
            text(reply[i + 1]),
            0,
            number(reply[i + 2], -1),
            number(reply[i + 3]),
            seconds,
            deadline,
        )
        for i in range(5, len(reply), 4)
    ]
    return StreamBatch(messages=messages, **_batch_state(reply))


# -- queues -------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    name: str
    length: int
    status: int  # 1 started, 0 stopped
    policy: str  # "broadcast" or "roundrobin"
    leased: int = 0  # messages handed out under a lease and not yet acked
    dead: int | None = None  # length of the dead-letter queue <q>:dead; None: no such queue
    other_consumers: int = 0  # streaming consumers of the other brokers sharing the Redis
    delayed: int = 0  # messages waiting in <q>:delayed until they are due


@dataclass(frozen=True)
class QueueCounts:
    """What /stats/<q> shows of a queue that only Redis knows."""

    length: int
    consumers_elsewhere: int  # streaming consumers of the other brokers sharing the Redis
    leased: int
    dead: int | None  # length of <q>:dead; None when there is no such queue
    delayed: int = 0  # messages waiting in <q>:delayed until they are due


@dataclass(frozen=True)
class QueueInfo:
    stats: QueueStats
    last_number: int  # number of the newest message ever added
    newest_keys: list[str]


# -- settling leases ----------------------------------------------------------


@dataclass(frozen=True)
class ReceiptResult:
    """What an ack or release did with one receipt."""

    receipt: str
    key: str
    done: bool  # False: the lease had run out, or the receipt is of an earlier delivery


def receipt_results(parsed: list[tuple[str, int]], reply: list) -> list[ReceiptResult]:
    """An ack or release reply: one done flag per receipt, in order."""
    return [
        ReceiptResult(receipt=receipt_of(key, count), key=key, done=bool(number(done)))
        for (key, count), done in zip(parsed, reply, strict=True)
    ]


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
    more: bool = False  # leases that ran out (or due messages) remain: sweep again
    by_queue: tuple[LeasesEnded, ...] = ()  # the same, per queue whose leases ended
    moved: int = 0  # due delayed messages moved to the tail of their queue


def sweep_result(reply: list) -> SweepResult:
    """A sweep_leases reply: the totals, whether more remain, the due messages moved,
    then each queue's."""
    ended = tuple(
        LeasesEnded(text(reply[i]), number(reply[i + 1]), number(reply[i + 2]))
        for i in range(5, len(reply), 3)
    )
    return SweepResult(
        *(number(part) for part in reply[:3]),
        more=bool(number(reply[3])),
        by_queue=ended,
        moved=number(reply[4]),
    )
