"""An ``application/x-www-form-urlencoded`` request body read as bytes.

cyclone decodes the whole body to text, splits it into fields and unquotes each
(the text, its fields and their values: copies of the body), and the broker then
encoded the message back to UTF-8 for Redis. Here a field without escapes is a
memoryview of the body itself, so a large message is held once, as the bytes that
arrived, until it is written to Redis. The fields are those of
``urllib.parse.parse_qs(body.decode())`` (what cyclone reads): ``&`` separates
them, ``+`` is a space, ``%XX`` an escaped byte, and a field without ``=`` or with
an empty value is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from restmq.web.utf8_check import is_utf8

#: a form value: a view of the body, or (escaped) its unquoted bytes
FormValue = bytes | memoryview


class NotUtf8(ValueError):
    """The body holds bytes that are not UTF-8 (cyclone would drop the connection)."""


@dataclass
class FormFields:
    """A form body's fields, in order; ``undecodable``: the first field whose unquoted
    name or value is not UTF-8 (named as text), None when all are."""

    fields: dict[str, list[FormValue]] = field(default_factory=dict)
    undecodable: str | None = None
    copied: int = 0  # bytes of unquoted values: held besides the body itself


def _is_utf8(data: bytes) -> bool:
    return data.isascii() or is_utf8(data)


def _unquote(part: memoryview) -> bytes:
    raw = part.tobytes()
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    return unquote_to_bytes(raw) if b"%" in raw else raw


def parse_form(body: bytes) -> FormFields:
    """The fields of ``body``; NotUtf8 when the body itself is not UTF-8."""
    if not _is_utf8(body):  # checked once; the fields are views of ``body``
        raise NotUtf8("the form body is not valid UTF-8")
    form = FormFields()
    view = memoryview(body)
    start, end = 0, len(body)
    while start <= end:
        stop = body.find(b"&", start)
        if stop < 0:
            stop = end
        equals = body.find(b"=", start, stop)
        if equals >= 0 and stop > equals + 1:  # no "=", or an empty value: left out
            _add_field(form, body, view, start, equals, stop)
        start = stop + 1
    return form


def _add_field(
    form: FormFields, body: bytes, view: memoryview, start: int, equals: int, stop: int
) -> None:
    name_bytes = _unquote(view[start:equals])
    valid = _is_utf8(name_bytes)
    value_start = equals + 1
    if body.find(b"+", value_start, stop) < 0 and body.find(b"%", value_start, stop) < 0:
        # The body's own bytes, UTF-8 as the whole body is (a field ends at an ASCII byte).
        value: FormValue = view[value_start:stop]
    else:
        value = _unquote(view[value_start:stop])
        form.copied += len(value)
        valid = valid and _is_utf8(value)
    name = name_bytes.decode("utf-8", "replace")
    if form.undecodable is None and not valid:
        form.undecodable = name
    form.fields.setdefault(name, []).append(value)
