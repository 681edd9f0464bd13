"""Our workarounds for cyclone 1.3 on Python 3 in answers and handlers.

This module and ``cyclone_fixes_connection`` (the request parser) are the only code that
touches cyclone's private state: everything else calls the helpers, mixins and
hooks here. Each piece is named after the defect it answers; docs/cyclone.md lists
them with their symptoms and tests (tests/test_cyclone_fixes.py). cyclone itself is
never patched: everything here is a subclass, a mixin or a helper.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from email.utils import parsedate
from urllib.parse import parse_qsl, unquote

import cyclone.web
from twisted.internet import defer

_HANDLER_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")

# -- answers: chunk framing and bare 204s -------------------------------------------------


class FixedChunked(cyclone.web.ChunkedTransferEncoding):
    """cyclone builds chunks with a str ``%`` format on bytes (a TypeError on the first
    streamed write); frame them as bytes. A 204 goes out bare, as HTTP requires
    (cyclone adds ``Content-Length: 0``)."""

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        if status_code == 204:
            # A 204 has no body, hence neither Content-Length nor chunk framing (RFC 9110 8.6).
            self._chunking = False
            if "Content-Length" in headers:
                del headers["Content-Length"]
            return status_code, headers, b""
        return super().transform_first_chunk(status_code, headers, chunk, finishing)

    def transform_chunk(self, block: bytes, finishing: bool) -> bytes:
        if self._chunking:
            if block:
                block = b"%x\r\n" % len(block) + block + b"\r\n"
            if finishing:
                block += b"0\r\n\r\n"
        return block


# -- handlers -------------------------------------------------------------------------------


def run_coroutine(fn: Callable) -> Callable:
    """cyclone ignores coroutines (``async def get`` never runs); hand them to Twisted."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return defer.ensureDeferred(fn(*args, **kwargs))

    return wrapper


class CoroutineHandlerMixin:
    """Subclasses may write ``async def get(...)``; wrapped once, at class creation."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _HANDLER_METHODS:
            method = cls.__dict__.get(name)
            if inspect.iscoroutinefunction(method):
                setattr(cls, name, run_coroutine(method))


class PlusInPathMixin:
    """cyclone decodes ``+`` in path segments as a space (``/q/a+b`` reads ``a b``);
    re-read the path arguments from the raw path. Needs ``self.route``, the route's regex."""

    route: re.Pattern | None = None

    def _execute(self, transforms, *args, **kwargs):
        if args and self.route is not None and "+" in self.request.path:
            match = self.route.match(self.request.path)
            if match:
                args = tuple(None if g is None else unquote(g) for g in match.groups())
        return super()._execute(transforms, *args, **kwargs)


class ErrorAnswerMixin:
    """cyclone turns an exception a handler raised into an answer in a private method,
    ``_handle_request_exception``. Subclasses choose the exception the answer is made
    from in ``error_to_answer``; ``answer_error`` answers one caught outside cyclone's
    own call (an errback, a handler that dispatches itself)."""

    def error_to_answer(self, error):
        """The exception (or Failure) to answer for ``error``; by default itself."""
        return error

    def answer_error(self, error) -> None:
        """Answer ``error`` as an exception raised by the handler method would be."""
        self._handle_request_exception(error)

    def _handle_request_exception(self, e):
        return super()._handle_request_exception(self.error_to_answer(e))


class OwnDispatchMixin:
    """A handler that answers its request its own way (a WebSocket upgrade) instead of
    through ``prepare`` and the method named like the request's. cyclone's entry
    point, ``_execute``, is private; cyclone calls ``dispatch`` here instead, with the
    route's path arguments."""

    def dispatch(self, *args, **kwargs) -> None:
        raise NotImplementedError

    def _execute(self, transforms, *args, **kwargs):
        self._transforms = transforms  # finish() must still apply them
        self.dispatch(*args, **kwargs)


def without_ui_modules(application: cyclone.web.Application) -> None:
    """cyclone gives every handler, in ``__init__``, a closure over itself for each UI
    module (its defaults: ``linkify``, ``xsrf_form_html``, ``Template``): a reference
    cycle, so a finished request's handler, request, headers and transforms are freed
    only by the cyclic garbage collector. Under load those collections took about a
    fifth of the broker's CPU. Our templates use no UI module, so there are none."""
    application.ui_modules = {}
    if application.ui_methods:  # a ui_method closes over its handler in the same way
        raise ValueError("UI methods would make every request handler a reference cycle")


def exception_of(kwargs: dict) -> BaseException | None:
    """cyclone passes ``write_error`` an ``exception=`` (a Failure or an exception), never
    the ``exc_info`` its documentation names."""
    exc = kwargs.get("exception")
    value = getattr(exc, "value", exc)  # a twisted Failure carries the exception in .value
    return value if isinstance(value, BaseException) else None


def is_finished(handler: cyclone.web.RequestHandler) -> bool:
    """Whether the answer has been finished (cyclone has no public way to ask)."""
    return bool(handler._finished)


def mark_finished(handler: cyclone.web.RequestHandler) -> None:
    """Nobody is left to answer: keep cyclone from finishing the request."""
    handler._finished = True


def keep_open(handler: cyclone.web.RequestHandler) -> None:
    """The answer stays open after the handler method returns (a stream)."""
    handler._auto_finish = False


def reason_of(handler: cyclone.web.RequestHandler) -> str:
    """The reason phrase of the status being answered."""
    return handler._reason


def client_is_gone(handler: cyclone.web.RequestHandler) -> bool:
    """cyclone's finish notice fires on normal completion too; tell a real disconnect."""
    transport = handler.request.connection.transport
    return not handler._finished and bool(getattr(transport, "disconnected", True))


def drop_bad_if_modified_since(request) -> None:
    """An unparseable If-Modified-Since makes StaticFileHandler answer 500."""
    value = request.headers.get("If-Modified-Since")
    if value is not None and parsedate(value) is None:
        del request.headers["If-Modified-Since"]


def undecodable_argument(request) -> str | None:
    """cyclone decodes %-escapes with errors="replace", so bytes that are not UTF-8
    silently become U+FFFD. Name the first query or form argument that is not UTF-8
    (a form body's fields are read as bytes, and checked as they are read: form_body)."""
    form_field = getattr(request, "undecodable_form_field", None)
    if "%" not in request.query:
        return form_field  # U+FFFD can only have come from a %-escape; raw bytes were checked
    if not any(
        "\ufffd" in value
        for values in request.arguments.values()
        for value in values
        if isinstance(value, str)
    ):
        return form_field  # the common case: nothing was replaced
    for name, value in parse_qsl(request.query, keep_blank_values=True, encoding="latin-1"):
        try:
            name.encode("latin-1").decode("utf-8")
            value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return name.encode("latin-1").decode("utf-8", "replace")
    return form_field


def stream_without_keep_alive(handler: cyclone.web.RequestHandler) -> None:
    """An HTTP/1.0 stream has no length, so it must end by closing the connection;
    cyclone keeps an HTTP/1.0 keep-alive connection open and the client waits forever."""
    if not handler.request.supports_http_1_1():
        handler.request.connection.no_keep_alive = True
        handler.clear_header("Connection")


def take_over_connection(handler: cyclone.web.RequestHandler, receive: Callable) -> None:
    """Every byte the client sends from now on goes to ``receive`` (a WebSocket).

    cyclone.websocket does not work on Python 3, so the upgraded connection is read here.
    """
    connection = handler.request.connection
    connection.rawDataReceived = receive
    connection.setRawMode()
    # The parser was paused for this request (one request at a time). Run it again:
    # what the client sent after its handshake goes to ``receive`` now (when the
    # upgrade happens inside the parser's own loop, that loop does it instead).
    connection.paused = False
    connection.dataReceived(b"")
