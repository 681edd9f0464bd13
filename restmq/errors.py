"""Errors every front end (REST, JSON protocol, XML-RPC, streams) maps to an answer."""

from __future__ import annotations

from restmq.storage.client import StorageUnavailable


class InvalidArgument(ValueError):
    """A client sent something the broker cannot accept (HTTP 400)."""


__all__ = ["InvalidArgument", "StorageUnavailable"]
