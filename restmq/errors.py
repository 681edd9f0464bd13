"""Errors every front end (REST, JSON protocol, XML-RPC, streams) maps to an answer."""

from __future__ import annotations


class InvalidArgument(ValueError):
    """A client sent something the broker cannot accept (HTTP 400)."""


class DataConflict(Exception):
    """Redis holds data of another shape where RestMQ expects its own (HTTP 409)."""


class StorageUnavailable(Exception):
    """Redis could not be asked; nothing was stored, the request may be retried (HTTP 503)."""


class OutcomeUnknown(StorageUnavailable):
    """A write reached Redis but its answer did not come back (HTTP 504).

    It may have happened: a blind retry could store twice, so the client must check first.
    """


__all__ = ["DataConflict", "InvalidArgument", "OutcomeUnknown", "StorageUnavailable"]
