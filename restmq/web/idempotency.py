"""The ``Idempotency-Key`` request header and the ``Idempotent-Replayed`` answer header.

A key comes as a structured-field string (RFC 8941 sf-string: ``"8e03978e-40d5"``, a
backslash escaping ``"`` or ``\\``) or bare (``8e03978e-40d5``); either way it is 1 to 255
visible ASCII characters (restmq.operations.validation.idempotency_key).
"""

from __future__ import annotations

from collections.abc import Callable

from restmq.errors import InvalidArgument
from restmq.operations import validation

HEADER = "Idempotency-Key"
#: set to ``true`` on an answer given again to a repeated add (nothing stored this time)
REPLAYED = "Idempotent-Replayed"

_BAD_STRING = (
    "the Idempotency-Key header is not a valid structured-field string: send the key in "
    "double quotes (printable ASCII; a backslash escapes only a quote or a backslash), "
    "or bare"
)


def key_from(get_list: Callable[[str], list[str]]) -> str | None:
    """The key of a request (``get_list``: its headers' ``get_list``); None without one.
    InvalidArgument (400) for a malformed one, or for several."""
    fields = get_list(HEADER)
    if not fields:
        return None
    if len(fields) > 1:
        raise InvalidArgument("send one Idempotency-Key header, not several")
    return parse(fields[0])


def parse(field: str) -> str:
    """The key in one header value: a structured-field string or a bare key."""
    text = field.strip(" \t")
    if text.startswith('"'):
        text = _sf_string(text)
    key = validation.idempotency_key(text)
    assert key is not None
    return key


def _sf_string(text: str) -> str:
    """RFC 8941 4.2.5: the characters between the quotes, escapes undone; nothing may
    follow the closing quote (a key takes no parameters)."""
    chars: list[str] = []
    escaped = False
    for at, char in enumerate(text[1:], start=1):
        if not " " <= char <= "~":
            raise InvalidArgument(_BAD_STRING)
        if escaped:
            if char not in '"\\':
                raise InvalidArgument(_BAD_STRING)
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            if at != len(text) - 1:
                raise InvalidArgument(_BAD_STRING)
            return "".join(chars)
        else:
            chars.append(char)
    raise InvalidArgument(_BAD_STRING)  # no closing quote
