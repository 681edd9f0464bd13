"""What an idempotent add's payload is compared by: a SHA-256 digest.

The digest is that of the JSON text ``[[value, ...], ttl, delay]`` (``json.dumps``
with ``ensure_ascii=False``, encoded as UTF-8), so a value given as text or as its
UTF-8 bytes digests the same, and digests stored by earlier versions still match.
It is computed over the values' bytes a slice at a time, without building that
text: for an 8 MiB message the text would be up to 32 MiB (4 bytes a character)
and its JSON form as much again, made on every add and every retry of one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

#: bytes hashed at a time; a slice holding characters JSON escapes is escaped as a copy
SLICE = 256 * 1024

# What json.dumps(..., ensure_ascii=False) escapes in a string: the quote, the
# backslash and the control characters, all ASCII, so never part of a multi-byte
# UTF-8 sequence: they are found and escaped in the bytes directly.
_ESCAPED = re.compile(rb'[\x00-\x1f"\\]')
_SHORT = {b'"': b'\\"', b"\\": b"\\\\", b"\b": b"\\b", b"\f": b"\\f", b"\n": b"\\n",
          b"\r": b"\\r", b"\t": b"\\t"}  # fmt: skip


def _escaped(piece: memoryview) -> bytes:
    """``piece`` with what JSON escapes escaped, one ``replace`` per character found
    (a few copies of the slice at most, never an object per match)."""
    out = piece.tobytes()
    found = set(_ESCAPED.findall(out))
    for char in sorted(found, key=lambda c: c != b"\\"):  # the backslash first
        out = out.replace(char, _SHORT.get(char) or b"\\u%04x" % char[0])
    return out


def _utf8(value: str | bytes | memoryview) -> memoryview:
    if isinstance(value, str):  # lone surrogates (from JSON escapes) as json.dumps keeps them
        value = value.encode("utf-8", "surrogatepass")
    return memoryview(value)


def payload_digest(values: Sequence[str | bytes | memoryview], ttl: int, delay: int) -> str:
    """The hex digest of ``[[values...], ttl, delay]`` as JSON; a value is text or its
    UTF-8 bytes (the same digest either way)."""
    digest = hashlib.sha256(b"[[")
    for at, value in enumerate(values):
        digest.update(b', "' if at else b'"')
        data = _utf8(value)
        for start in range(0, len(data), SLICE):
            piece = data[start : start + SLICE]
            if _ESCAPED.search(piece) is None:
                digest.update(piece)
            else:
                digest.update(_escaped(piece))
        digest.update(b'"')
    digest.update(b"], " + json.dumps([ttl, delay])[1:].encode("ascii"))
    return digest.hexdigest()
