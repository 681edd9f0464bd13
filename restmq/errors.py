"""The one family of errors the operations layer raises; each front end maps it to an answer.

Every error here derives from RestMQError (so does restmq.access's Refused). HTTP
(restmq.web.handlers.base.as_api_error, which also answers refused COMET, SSE and
WebSocket streams), XML-RPC (restmq.web.handlers.xmlrpc.as_fault) and the JSON protocol
(restmq.web.handlers.json_commands.dispatch, which answers an empty queue its own way
and leaves the rest to as_api_error) each map this family in one place. Front ends
never raise domain errors of their own.
"""

from __future__ import annotations


class RestMQError(Exception):
    """The family: what a client is answered for, each wire format in its own way."""


class InvalidArgument(RestMQError, ValueError):
    """A client sent something the broker cannot accept (HTTP 400)."""


class InvalidStatus(InvalidArgument):
    """A status word other than start/stop (``/control`` answers it in its own shape)."""

    def __init__(self, word: object) -> None:
        super().__init__(f"invalid status: {word}")
        self.word = word


class EmptyQueue(RestMQError, LookupError):
    """Nothing to take; each route answers it its own way (404, 204, a JSON body)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} is empty")
        self.queue = queue


class LeaseGone(RestMQError, LookupError):
    """The lease a receipt names ran out, was settled, or belongs to an earlier delivery
    (HTTP 409): the message went back, or to someone else."""

    def __init__(self, queue: str, receipt: str) -> None:
        super().__init__(f"the lease of receipt {receipt!r} on queue {queue!r} is gone")
        self.queue = queue
        self.receipt = receipt


class DataConflict(RestMQError):
    """Redis holds data of another shape where RestMQ expects its own (HTTP 409)."""


class StorageUnavailable(RestMQError):
    """Redis could not be asked; nothing was stored, the request may be retried (HTTP 503)."""


class TooManyConsumers(RestMQError):
    """The broker already serves ``--max-consumers`` streaming consumers (HTTP 503)."""


class OutcomeUnknown(StorageUnavailable):
    """A write reached Redis but its answer did not come back (HTTP 504).

    It may have happened: a blind retry could store twice, so the client must check first.
    """


class QueueFull(RestMQError):
    """An add would take a queue past its max_length (HTTP 507); nothing was stored."""

    def __init__(self, queue: str, max_length: int) -> None:
        super().__init__(f"queue {queue} is full (max_length {max_length})")
        self.queue = queue
        self.max_length = max_length


class StorageFull(StorageUnavailable):
    """Valkey refuses writes for lack of memory (``maxmemory``; HTTP 507); nothing was
    stored. Takes, acks and purges still work, so consumers can drain it. A kind of
    StorageUnavailable, so the broker's own loops wait it out as any outage."""

    def __init__(self) -> None:
        super().__init__("storage is full")


class IdempotencyConflict(RestMQError):
    """An idempotency key came again with another payload (HTTP 422); nothing was stored."""

    def __init__(self, queue: str, key: str) -> None:
        super().__init__(
            f"the Idempotency-Key {key[:80]!r} was used on queue {queue!r} with another payload"
        )
        self.queue = queue
        self.key = key


__all__ = [
    "DataConflict",
    "EmptyQueue",
    "IdempotencyConflict",
    "InvalidArgument",
    "InvalidStatus",
    "LeaseGone",
    "OutcomeUnknown",
    "QueueFull",
    "RestMQError",
    "StorageFull",
    "StorageUnavailable",
    "TooManyConsumers",
]
