"""Errors every front end (REST, JSON protocol, XML-RPC, streams) maps to an answer."""

from __future__ import annotations


class InvalidArgument(ValueError):
    """A client sent something the broker cannot accept (HTTP 400)."""


class DataConflict(Exception):
    """Redis holds data of another shape where RestMQ expects its own (HTTP 409)."""


class StorageUnavailable(Exception):
    """Redis could not be reached in time; the request may be retried (HTTP 503)."""


__all__ = ["DataConflict", "InvalidArgument", "StorageUnavailable"]
