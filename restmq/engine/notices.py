"""The messages brokers sharing one Redis publish to each other (see docs/brokers.md).

Each queue has a channel (restmq.engine.queues.QueueEngine.channel). The Lua scripts publish
on it; every broker with streaming consumers of the queue listens. Three kinds of
message travel there: a bare notice word, a settled notice (the word ``settled``
and receipts), and a broadcast batch (a JSON object).
The words are passed into the scripts as arguments, so this is the one place
that spells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: Notice words: what happened to the queue.
ADD = "add"  # messages were added or put back: take a batch if you have consumers
PURGE = "purge"  # the queue was purged: end your streams of it
POLICY = "policy"  # the delivery policy changed (informational)
START = "start"  # the queue was started: deliver its backlog
STOP = "stop"  # the queue was stopped (informational)

#: Leases were acked or released: ``settled <receipt> <receipt>...`` (receipts hold no
#: space, as queue names do not). The leased stream holding them may take more.
SETTLED = "settled"


def is_settled(message: str) -> bool:
    return message.startswith(SETTLED + " ")


def settled_receipts(message: str) -> list[str]:
    """The receipts a settled notice names."""
    return message.split()[1:]


#: Version of the broadcast batch message. A broker reads a batch without "v"
#: (from an older broker) as version 1. New optional fields do not change it; a
#: change older brokers would misread does, and a broker skips batches of a
#: version newer than it knows.
BATCH_VERSION = 1
#: Field names of the batch message: ``{"v": 1, "o": origin, "m": [key, body, ...]}``
VERSION_FIELD, ORIGIN_FIELD, MESSAGES_FIELD = "v", "o", "m"


@dataclass(frozen=True)
class Batch:
    """A broadcast batch another broker took and published for everyone's consumers."""

    origin: str  # the id of the broker that took it
    messages: list[tuple[str, str]]  # (key, body), oldest first
    version: int = BATCH_VERSION


class UnreadableBatch(ValueError):
    """A batch message this broker cannot read (malformed, or a newer version)."""


def is_batch(message: str) -> bool:
    return message.startswith("{")


def encode_batch(origin: str, messages: list[tuple[str, str]]) -> str:
    """The batch as the take_for_streams script publishes it (used by tests and docs)."""
    flat = [part for message in messages for part in message]
    return json.dumps({VERSION_FIELD: BATCH_VERSION, ORIGIN_FIELD: origin, MESSAGES_FIELD: flat})


def decode_batch(message: str) -> Batch:
    """Read a batch message; raise UnreadableBatch when it cannot be read."""
    try:
        data = json.loads(message)
        version = data.get(VERSION_FIELD, 1)
        origin = data[ORIGIN_FIELD]
        flat = data[MESSAGES_FIELD]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnreadableBatch("malformed batch") from None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UnreadableBatch(f"batch version {version!r} is not a version")
    if version > BATCH_VERSION:
        raise UnreadableBatch(f"batch version {version} is newer than {BATCH_VERSION}")
    if not isinstance(flat, list):
        raise UnreadableBatch("the batch's messages are not a list")
    pairs = [(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
    return Batch(str(origin), pairs, version)
