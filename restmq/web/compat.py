"""Our workarounds for cyclone 1.3 on Python 3, in one place.

Each piece names the defect it answers (the D-numbers of
``shared/docs/cyclone-py3.md``) and has a test in ``tests/test_cyclone_compat.py``.
cyclone itself is never patched: everything here is a subclass or a transform.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from email.utils import parsedate
from urllib.parse import parse_qsl

import cyclone.httpserver
import cyclone.web
from twisted.internet import defer, reactor
from twisted.logger import Logger

log = Logger(namespace="restmq.http")

_HANDLER_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")


class FixedChunked(cyclone.web.ChunkedTransferEncoding):
    """D8: cyclone builds chunks with a str ``%`` format on bytes; frame them as bytes.

    Also: a 204 goes out bare, as HTTP requires (cyclone adds ``Content-Length: 0``).
    """

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


def run_coroutine(fn: Callable) -> Callable:
    """D11: cyclone ignores coroutines; hand them to Twisted as Deferreds."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return defer.ensureDeferred(fn(*args, **kwargs))

    return wrapper


class CoroutineHandlerMixin:
    """D11: subclasses may write ``async def get(...)``; wrapped once, at class creation."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _HANDLER_METHODS:
            method = cls.__dict__.get(name)
            if inspect.iscoroutinefunction(method):
                setattr(cls, name, run_coroutine(method))


def exception_of(kwargs: dict) -> BaseException | None:
    """D2: cyclone passes ``exception=`` (a Failure or an exception), never ``exc_info``."""
    exc = kwargs.get("exception")
    value = getattr(exc, "value", exc)  # a twisted Failure carries the exception in .value
    return value if isinstance(value, BaseException) else None


def client_is_gone(handler: cyclone.web.RequestHandler) -> bool:
    """D10: cyclone's finish notice fires on normal completion too; tell a real disconnect."""
    transport = handler.request.connection.transport
    return not handler._finished and bool(getattr(transport, "disconnected", True))


def drop_bad_if_modified_since(request) -> None:
    """D13: an unparseable If-Modified-Since makes StaticFileHandler answer 500."""
    value = request.headers.get("If-Modified-Since")
    if value is not None and parsedate(value) is None:
        del request.headers["If-Modified-Since"]


def undecodable_argument(request) -> str | None:
    """D1: cyclone decodes %-escapes with errors="replace", so bytes that are not UTF-8
    silently become U+FFFD. Name the first query or form argument that is not UTF-8."""
    body = request.body or b""
    if "%" not in request.query and b"%" not in body:
        return None  # U+FFFD can only have come from a %-escape; raw bytes were checked
    if not any(
        "\ufffd" in (value if isinstance(value, str) else "")
        for values in request.arguments.values()
        for value in values
    ):
        return None  # the common case: nothing was replaced
    sources = [request.query]
    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith("application/x-www-form-urlencoded") and request.body:
        sources.append(request.body.decode("utf-8"))  # raw bytes were checked on arrival
    for source in sources:
        for name, value in parse_qsl(source, keep_blank_values=True, encoding="latin-1"):
            try:
                name.encode("latin-1").decode("utf-8")
                value.encode("latin-1").decode("utf-8")
            except UnicodeDecodeError:
                return name.encode("latin-1").decode("utf-8", "replace")
    return None


def stream_without_keep_alive(handler: cyclone.web.RequestHandler) -> None:
    """D9: an HTTP/1.0 stream has no length, so it must end by closing the connection."""
    if not handler.request.supports_http_1_1():
        handler.request.connection.no_keep_alive = True
        handler.clear_header("Connection")


def error_body(message: str) -> str:
    """The body of every error answer: ``{"error": message}`` and CRLF."""
    return json.dumps({"error": message}) + "\r\n"


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = error_body(message).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BrokerHTTPConnection(cyclone.httpserver.HTTPConnection):
    """cyclone's HTTP/1.1 connection, made safe for a broker.

    - D6: requests on one connection are served one after another (a pipelined
      request waits until the one before it has finished), by pausing the parser,
      not the socket, so disconnects are still seen.
    - A body larger than ``max_body`` is refused with 413 as soon as its headers
      arrive; it is read and thrown away, never kept, so the client sees the answer.
    - D7: chunked request bodies, which cyclone cannot parse, get 411.
    - D1: a body, request line or header that is not UTF-8, or a malformed
      request line, gets 400 instead of a dropped connection.
    - A client that does not finish sending its headers within
      ``header_timeout`` seconds is disconnected (also idle keep-alive connections),
      and so is one that then takes longer than that again to send the body.
    """

    #: where the timers run; the module is imported by twistd's makeService (or by tests),
    #: once the reactor is chosen
    clock = reactor
    _idle_timer = None
    _linger_timer = None  # closes a connection whose refused body never finishes arriving
    _discard_left = 0

    def connectionMade(self):
        super().connectionMade()
        self.request_callback = self._serve_one
        self._discard_left = 0
        self._arm_idle_timer()

    # -- timeouts -----------------------------------------------------------

    def _arm_idle_timer(self):
        timeout = self.factory.settings.get("header_timeout")
        if not timeout:
            return
        self._cancel_idle_timer()
        self._idle_timer = self.clock.callLater(timeout, self._idle_timeout)

    def _cancel_idle_timer(self):
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_timeout(self):
        self._idle_timer = None
        if self._headersbuffer:
            log.info("dropping a client that did not finish its headers in time")
        elif self._contentbuffer is not None:
            log.info("dropping a client that did not finish its request body in time")
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._cancel_idle_timer()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        super().connectionLost(reason)

    # -- requests -----------------------------------------------------------

    def _serve_one(self, request):
        self.paused = True  # stop parsing pipelined bytes until this request is done
        # A request with a body arrives while the parser is still in raw mode (cyclone
        # goes back to line mode only after this call), so only a switch made by the
        # handler itself means that a WebSocket took the socket over.
        was_line_mode = self.line_mode
        self.factory(request)
        if was_line_mode and not self.line_mode:
            self.paused = False

    def finish(self):
        super().finish()
        transport = self.transport
        if not (transport.disconnecting or transport.disconnected):
            self._arm_idle_timer()
            if self.paused:
                self.paused = False
                self.dataReceived(b"")

    def _refuse(self, status: int, reason: str, message: str, discard: int = 0) -> None:
        self.transport.write(_raw_response(status, reason, message))
        self._headersbuffer = []
        if discard > 0:
            # Read the body and drop it: closing with unread data would reset the
            # connection and the client might never see the answer.
            self._discard_left = discard
            self.setRawMode()
            self._linger_timer = self.clock.callLater(10, self.transport.loseConnection)
        else:
            self.paused = True  # parse nothing more that came on this connection
            self.transport.loseConnection()

    def rawDataReceived(self, data):
        if self._discard_left:
            self._discard_left -= len(data)
            if self._discard_left <= 0:
                self._discard_left = 0
                self.transport.loseConnection()
            return
        super().rawDataReceived(data)

    def _on_headers(self, data):
        if not data.strip():
            return  # RFC 9112 2.2: empty lines before a request line are ignored
        self._cancel_idle_timer()
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        lines = head.split(b"\r\n")
        fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        encoding = fields.get(b"transfer-encoding", b"").strip()
        if encoding and encoding != b"identity":
            self._refuse(
                411,
                "Length Required",
                "chunked request bodies are not supported: send a Content-Length",
            )
            return
        length = fields.get(b"content-length", b"0").strip() or b"0"
        if not length.isdigit():
            self._refuse(400, "Bad Request", "Content-Length must be a whole number")
            return
        max_body = self.factory.settings.get("max_body")
        if max_body and int(length) > max_body:
            log.info(
                "refused a {length}-byte request body (limit {limit})",
                length=int(length),
                limit=max_body,
            )
            self._refuse(
                413,
                "Payload Too Large",
                f"request body of {int(length)} bytes is over the limit of {max_body} bytes",
                discard=int(length) if b"100-continue" not in fields.get(b"expect", b"") else 0,
            )
            return
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"http/"):
            # cyclone would drop the connection without a word
            self._refuse(400, "Bad Request", "malformed HTTP request line")
            return
        try:
            lines[0].decode("utf-8")
        except UnicodeDecodeError:
            self._refuse(400, "Bad Request", "the request line is not valid UTF-8")
            return
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:  # D1: cyclone drops the connection silently
            self._refuse(400, "Bad Request", "the request headers are not valid UTF-8")
            return
        super()._on_headers(data)
        if self._contentbuffer is not None:
            self._arm_idle_timer()  # the body, too, must arrive in time

    def _on_request_body(self, data):
        self._cancel_idle_timer()  # the body is complete; finish() re-arms for the next request
        try:
            super()._on_request_body(data)
        except UnicodeDecodeError:
            self._refuse(400, "Bad Request", "the form body is not valid UTF-8")
