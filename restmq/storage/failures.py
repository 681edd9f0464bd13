"""What a failed Redis call means to a client of the broker.

Some failures mean Redis could not be asked (503, nothing happened), some that a
write was sent but its answer lost (504: it may have happened), some that the server
refuses to serve now (loading, read-only...), each said in words an operator can act
on, and some that the server is full (out of memory: StorageFull, 507).
"""

from __future__ import annotations

import txredisapi
from twisted.internet import defer, error
from twisted.python import failure

from restmq.errors import (
    DataConflict,
    InvalidArgument,
    OutcomeUnknown,
    StorageFull,
    StorageUnavailable,
)

# Errors that mean "Redis could not be asked" rather than "Redis said no".
_UNAVAILABLE = (
    txredisapi.ConnectionError,  # includes txredisapi.TimeoutError
    defer.CancelledError,
    error.ConnectionLost,
    error.ConnectionDone,
)
# Replies of a server that cannot serve now, and what to tell the client.
_REFUSALS = {
    "LOADING": "Redis is loading its data",
    "MASTERDOWN": "Redis has lost its master",
    "READONLY": "Redis is a read-only replica",
    "TRYAGAIN": "Redis asks to try again",
    "CLUSTERDOWN": "the Valkey Cluster cannot serve this key now",
    "BUSY ": "Redis is busy running a script",
    "NOAUTH": "Redis wants a password: start RestMQ with --redis-password",
    "WRONGPASS": "Redis refused the password given with --redis-password",
    "NOPERM": "the Redis user lacks a permission RestMQ needs",
    "NOREPLICAS": "Redis has fewer replicas than its min-replicas-to-write",
}


def translate_failure(reason: failure.Failure, writes: bool, where: str) -> failure.Failure:
    """What a failed call means to a client: StorageUnavailable (503) when nothing can
    have happened, OutcomeUnknown (504) when a write may have, DataConflict for a key
    of the wrong type; anything else is passed on as it is. ``where`` names the server."""
    if reason.check(StorageUnavailable, InvalidArgument):
        return reason
    if reason.check(*_UNAVAILABLE):
        if writes:
            raise OutcomeUnknown(
                f"stored state unknown: the connection to {where} was lost after "
                "a write was sent; it may have happened: check before retrying"
            )
        raise StorageUnavailable(f"storage unavailable: connection to {where} lost")
    if reason.check(txredisapi.ResponseError):
        text = str(reason.value)
        # maxmemory reached: Valkey refuses a write that could grow memory (in a script,
        # its first such write, so nothing was written) and still serves deletes
        if text.startswith("OOM "):
            raise StorageFull()
        for prefix, meaning in _REFUSALS.items():
            if text.startswith(prefix):
                raise StorageUnavailable(f"storage unavailable: {meaning} ({text[:120]})")
        if text.startswith("WRONGTYPE"):
            raise DataConflict(
                "a Redis key of this queue holds another kind of value: the database is "
                "shared with something that is not RestMQ, or was edited by hand"
            )
    return reason
