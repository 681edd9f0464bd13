"""``GET /openapi.json``: the OpenAPI description of the HTTP routes, as it is shipped.

The document is a file in the package (``restmq/openapi.json``), written by hand
next to the handlers it describes; ``tests/test_openapi.py`` fuzzes a live broker
against it, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import functools
from importlib import resources

from restmq.web.handlers.base import BaseHandler

DOCUMENT = resources.files("restmq").joinpath("openapi.json")


@functools.cache
def document() -> bytes:
    """The document's bytes, read once (a small file, so the first request may read it)."""
    return DOCUMENT.read_bytes()


class OpenApiHandler(BaseHandler):
    """Open to everyone, whatever acl.conf says: it describes the routes, never the data,
    and tools (Swagger UI, client generators) fetch it without credentials."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(document())
