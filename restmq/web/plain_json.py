"""The JSON body most producers send, ``{"value": "<text>"}``, read without decoding.

``json.loads`` decodes the whole body to text and builds the message as text once
more (up to 4 bytes a character each), which the broker then encodes back to UTF-8
for Redis. When the string holds no escape, quote or control character, its UTF-8
bytes in the body are the message itself: a view of them is what gets stored, and
the body is held once. Any other body is left to ``json.loads``, which reads it (or
refuses it) as it always did.
"""

from __future__ import annotations

import re

from restmq.web.utf8_check import is_utf8

_WS = rb"[ \t\n\r]*"  # JSON's whitespace (re's \s has two more)
_PLAIN = re.compile(rb"%s\{%s\"value\"%s:%s\"([^\"\\\x00-\x1f]*)\"%s\}%s" % ((_WS,) * 6))
_NOT_ASCII = re.compile(rb"[\x80-\xff]")


def plain_value(body: bytes) -> memoryview | None:
    """The UTF-8 bytes of ``body``'s "value" when the body is exactly a plain
    ``{"value": "<text>"}``; None for any other body (read it with json.loads)."""
    match = _PLAIN.fullmatch(body)
    if match is None:
        return None
    start, end = match.span(1)
    value = memoryview(body)[start:end]
    if _NOT_ASCII.search(body, start, end) is not None and not is_utf8(value):
        return None  # json.loads refuses it
    return value
