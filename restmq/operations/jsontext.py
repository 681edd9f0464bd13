"""Strict JSON for what clients send: every refusal is an InvalidArgument (HTTP 400).

Python's json module reads and writes ``NaN``, ``Infinity`` and ``-Infinity``,
which are not JSON (RFC 8259), reads ``1e999`` as an infinite float, and runs
out of stack on deeply nested arrays. None of that may reach storage or an answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from restmq.errors import InvalidArgument

TOO_DEEP = "JSON nested too deeply"
NOT_FINITE = "numbers must be finite: NaN and Infinity cannot be stored"


def _refuse_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not valid JSON: {NOT_FINITE}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidArgument(f"the number {text[:40]} is out of range: {NOT_FINITE}")
    return value


def decode(text: str | bytes, what: str = "JSON") -> Any:
    """Parse ``text``; malformed JSON, NaN/Infinity or too deep nesting is a 400."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidArgument(TOO_DEEP) from None
    except InvalidArgument:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise InvalidArgument(f"malformed {what}: {exc}") from None


def encode(value: Any, unsupported: Callable[[Any], Any] | None = None) -> str:
    """``value`` as JSON text to store; ``unsupported`` raises for types JSON lacks."""
    try:
        return json.dumps(value, allow_nan=False, default=unsupported)
    except RecursionError:
        raise InvalidArgument(TOO_DEEP) from None
    except InvalidArgument:
        raise
    except ValueError:  # allow_nan=False: inf or nan somewhere in the value
        raise InvalidArgument(NOT_FINITE) from None
    except TypeError as exc:  # no ``unsupported`` given, and a type JSON cannot hold
        raise InvalidArgument(f"cannot store the value as JSON: {exc}") from None


def as_text(
    value: Any,
    *,
    null: str = "a message value cannot be null",
    unsupported: Callable[[Any], Any] | None = None,
) -> str:
    """A message value as the text to store: a string as it is, any other JSON value
    (number, boolean, array, object) as its JSON text. ``null`` says why None is refused."""
    if isinstance(value, str):
        return value
    if value is None:
        raise InvalidArgument(null)
    return encode(value, unsupported)


def as_utf8(
    value: Any, *, null: str = "a message value cannot be null"
) -> bytes | memoryview | str:
    """``as_text(value)`` as the UTF-8 bytes Redis is sent: never larger than the
    JSON it came in, where text may take up to 4 bytes a character. Text that cannot
    be UTF-8 (a lone surrogate) stays text: storing it is refused, as before."""
    if isinstance(value, memoryview):  # already UTF-8 (restmq.web.plain_json)
        return value
    text = as_text(value, null=null)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text
