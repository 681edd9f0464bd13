"""The bodies each wire format answers, built in one place per format.

Front ends pass operation results (restmq.operations.results) through these functions;
none of them spells a body itself. The shapes are the original RestMQ's.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii
from typing import Any

from restmq.engine.keys import POLICIES
from restmq.engine.messages import LeasedMessage, Message
from restmq.operations.results import (
    Acked,
    AllStats,
    Deleted,
    LeaseChanged,
    OneStats,
    Policy,
    Purged,
    Status,
    Subscription,
)

# -- REST: JSON over HTTP (/, /q, /p, /control, /stats) ------------------------


def message(m: Message) -> dict[str, Any]:
    """A popped message: ``{"key", "value", "count"}``; a leased one adds
    ``"receipt"``, ``"deliveries"`` and ``"lease"`` (seconds)."""
    if isinstance(m, LeasedMessage):
        return {
            "key": m.key,
            "value": m.value,
            "count": m.count,
            "receipt": m.receipt,
            "deliveries": m.deliveries,
            "lease": m.lease,
        }
    return {"key": m.key, "value": m.value, "count": m.count}


def acked(result: Acked) -> dict[str, Any]:
    return {"queue": result.queue, "key": result.key, "acked": result.acked}


def lease_changed(result: LeaseChanged) -> dict[str, Any]:
    return {
        "queue": result.queue,
        "key": result.key,
        "receipt": result.receipt,
        "lease": result.lease,
    }


def messages_json(messages: list[Message]) -> str:
    """The JSON text of ``[message(m) for m in messages]``, as the broker's encoder
    writes it, built without the dicts: a batch pop answers with hundreds."""
    quote = encode_basestring_ascii
    return (
        "["
        + ", ".join(
            f'{{"key": {quote(m.key)}, "value": {quote(m.value)}, "count": {m.count:d}}}'
            for m in messages
        )
        + "]"
    )


def purged(result: Purged) -> dict[str, Any]:
    # The original answered the DEL count of the list key: 1 if anything was pending.
    return {"queue": result.queue, "status": 1 if result.count else 0}


def policy(result: Policy) -> dict[str, Any]:
    # max_deliveries only once set: a queue without it answers as the original did
    answer: dict[str, Any] = {"queue": result.queue, "value": result.policy}
    if result.max_deliveries:
        answer["max_deliveries"] = result.max_deliveries
    if result.max_length:  # likewise only once set
        answer["max_length"] = result.max_length
    return answer


def _lease_figures(leased: int, dead: int | None) -> dict[str, int]:
    """``"leased"``, and ``"dead"`` when the queue has a dead-letter queue."""
    return {"leased": leased} if dead is None else {"leased": leased, "dead": dead}


def _delay_figure(delayed: int) -> dict[str, int]:
    """``"delayed"`` when the queue has delayed messages: a queue that uses no delay keeps
    its answer."""
    return {"delayed": delayed} if delayed else {}


def status(storage: str, result: Status) -> dict[str, Any]:
    return {
        "redis": storage,
        "queue": result.queue,
        "status": {"queue": result.queue, "status": result.status},
    }


def statuses(result: AllStats) -> dict[str, Any]:
    queues = {
        row.stats.name: {"queue": row.stats.name, "status": row.stats.status}
        for row in result.queues
    }
    return {"redis": result.storage, "queues": queues, "count": len(queues)}


def status_set(result: Status) -> dict[str, Any]:
    return {"stat": {"queue": result.queue, "status": result.status}}


def invalid_status(word: object) -> dict[str, Any]:
    return {"stat": f"invalid status: {word}"}


def all_stats(result: AllStats) -> dict[str, Any]:
    """``/stats/`` (and XML-RPC ``stats()``): every queue."""
    queues = {
        row.stats.name: {
            "name": row.stats.name,
            "len": row.stats.length,
            "status": row.stats.status,
            # the number the original stored: 1 broadcast, 2 roundrobin
            "policy": int(POLICIES[row.stats.policy]),
            "consumers": row.consumers,
            **_lease_figures(row.stats.leased, row.stats.dead),
            **_delay_figure(row.stats.delayed),
        }
        for row in result.queues
    }
    return {"queues": queues, "redis": result.storage, "count": len(queues)}


def stats_event(result: AllStats) -> dict[str, Any]:
    """A ``stats`` event of the ``/stats/`` event stream: the ``/stats/`` answer (each
    queue with its ``leased`` count and, when its dead-letter queue exists, ``dead``),
    plus ``"storage"``, what the dashboard shows of it: ``{"kind", "address",
    "connections", "up"}``. ``"redis"`` keeps the original's text, as in ``/stats/``."""
    event = all_stats(result)
    state = result.storage_state
    if state is not None:
        event["storage"] = {
            "kind": state.kind,
            "address": state.address,
            "connections": state.connections,
            "up": state.up,
        }
    return event


def one_stats(result: OneStats) -> dict[str, Any]:
    """``/stats/<queue>`` (and XML-RPC ``stats(queue)``)."""
    return {
        "redis": result.storage,
        "queue": result.queue,
        "len": result.length,
        "consumers": result.consumers,
        **_lease_figures(result.leased, result.dead),
        **_delay_figure(result.delayed),
    }


def subscription(result: Subscription) -> dict[str, Any]:
    """``/q/<q>/subscriptions/<name>``: the subscription and the queue it fills."""
    return {"queue": result.queue, "subscription": result.name, "delivers_to": result.delivers_to}


def subscriptions(queue: str, names: list[str]) -> dict[str, Any]:
    return {"queue": queue, "subscriptions": names}


# -- streams: COMET, Server-Sent Events, WebSocket ----------------------------


def stream_message(m: Message) -> dict[str, Any]:
    """What every streaming consumer is sent for a message: ``{"key", "value"}``; a
    leased stream's message adds ``receipt`` (what an ack needs) and ``deliveries``."""
    if isinstance(m, LeasedMessage):
        return {"key": m.key, "value": m.value, "receipt": m.receipt, "deliveries": m.deliveries}
    return {"key": m.key, "value": m.value}


# -- JSON protocol (/queue) ----------------------------------------------------

JSON_EMPTY = {"error": "empty queue"}


def json_added(queue: str, value_as_sent: Any, key: str) -> dict[str, Any]:
    return {"queue": queue, "value": value_as_sent, "key": key}


def json_peeked(queue: str, m: Message) -> dict[str, Any]:
    return {"queue": queue, "value": m.value, "key": m.key, "count": m.count}


def json_taken(queue: str, m: Message) -> dict[str, Any]:
    """A taken message; under a lease with its ``"receipt"`` and ``"deliveries"``."""
    if isinstance(m, LeasedMessage):
        return {
            "queue": queue,
            "value": m.value,
            "key": m.key,
            "receipt": m.receipt,
            "deliveries": m.deliveries,
        }
    return {"queue": queue, "value": m.value, "key": m.key}


def json_deleted(result: Deleted) -> dict[str, Any]:
    return {"queue": result.queue, "key": result.key, "deleted": result.deleted}


# -- XML-RPC -------------------------------------------------------------------


def xmlrpc_taken(queue: str, m: Message) -> dict[str, Any]:
    return {"queue": queue, "key": m.key, "value": m.value}


def xmlrpc_leased(m: LeasedMessage) -> dict[str, Any]:
    return {"key": m.key, "value": m.value, "receipt": m.receipt, "deliveries": m.deliveries}
