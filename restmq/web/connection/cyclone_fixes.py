"""Our workarounds for cyclone 1.3 on Python 3, and the only code that touches its private state.

Each piece is named after the defect it answers; docs/cyclone.md lists them with
their symptoms and tests (tests/test_cyclone_fixes.py). cyclone itself is never
patched: everything here is a subclass, a mixin or a helper. Broker policy (the
error body format, limits, timeouts) lives in restmq.web.connection.http_policy.
"""

from __future__ import annotations

import functools
import inspect
import io
import re
import tempfile
from collections.abc import Callable
from email.utils import parsedate
from urllib.parse import parse_qsl, unquote, urlsplit

import cyclone.httpserver
import cyclone.httputil
import cyclone.web
from twisted.internet import defer, reactor
from twisted.logger import Logger

log = Logger(namespace="restmq.http")

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


def remember_transforms(handler: cyclone.web.RequestHandler, transforms: list) -> None:
    """A handler that overrides ``_execute`` must still let ``finish`` apply the transforms."""
    handler._transforms = transforms


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


# -- the request head ---------------------------------------------------------------------


class BadRequestHead(ValueError):
    """A request head we refuse, with the status and the message the client gets."""

    def __init__(self, message: str, status: int = 400, reason: str = "Bad Request") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class RequestHead:
    """A request line and its header fields, checked strictly (RFC 9112).

    cyclone drops the connection without a word on much of what is refused here, or
    reads it in a way another server in front of us might not (request smuggling).
    The head is parsed once, here; cyclone gets its request built from this parse
    (``FixedHTTPConnection.serve_head``) instead of reading the bytes again.
    """

    def __init__(self, method: bytes, target: bytes, version: bytes, fields: list) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields  # [(name, value)], names as sent
        self.content_length = 0  # set by _check_framing: every Content-Length agrees

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.fields if key.lower() == name]

    @property
    def expects_continue(self) -> bool:
        return any(b"100-continue" in value.lower() for value in self.values(b"expect"))

    @classmethod
    def parse(cls, data: bytes) -> RequestHead:
        lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        while lines and not lines[-1]:
            lines.pop()  # cyclone hands the head over with each line's CRLF
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise BadRequestHead("malformed HTTP request line")
        method, target, version = parts
        match = _VERSION.fullmatch(version)
        if match is None:
            raise BadRequestHead("malformed HTTP request line")
        if match.group(1) != b"1":  # e.g. the HTTP/2 preface, "PRI * HTTP/2.0"
            raise BadRequestHead(
                "only HTTP/1.0 and HTTP/1.1 are supported", 505, "HTTP Version Not Supported"
            )
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            try:
                lines[0].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequestHead("the request line is not valid UTF-8") from None
            raise BadRequestHead("the request headers are not valid UTF-8") from None
        head = cls(method, target, version, [_field(line) for line in lines[1:]])
        head._check_framing()
        return head

    def _check_framing(self) -> None:
        """One way only to tell where the body ends (RFC 9112 6.3)."""
        lengths: set[bytes] = set()
        encodings: list[bytes] = []
        for name, value in self.fields:
            if len(name) == 14 and name.lower() == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                encodings.append(value)
        if not lengths and not encodings:
            return  # most requests: no body
        if encodings and lengths:
            raise BadRequestHead(
                "a request must not have both Transfer-Encoding and Content-Length"
            )
        if any(not value.isdigit() for value in lengths):
            raise BadRequestHead("Content-Length must be a whole number")
        if len({int(value) for value in lengths}) > 1:
            raise BadRequestHead("conflicting Content-Length values")
        if any(value.strip().lower() != b"identity" for value in encodings):
            # cyclone cannot read a chunked body: it would take the chunks for the next request
            raise BadRequestHead(
                "chunked request bodies are not supported: send a Content-Length",
                411,
                "Length Required",
            )
        if lengths:
            self.content_length = int(next(iter(lengths)))

    def origin_target(self) -> bytes:
        """The target in origin form: cyclone would take ``http://host/q/x`` for the path."""
        target = self.target
        if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            parts = urlsplit(target)
            target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
        return target

    def cyclone_headers(self) -> cyclone.httputil.HTTPHeaders:
        """The header fields as cyclone's request holds them (text, names in Http-Case),
        with at most one Content-Length (cyclone would read "7,7") and no
        Transfer-Encoding (only "identity" gets here: the same as none)."""
        headers = cyclone.httputil.HTTPHeaders()
        add = headers.add
        length_seen = False
        for name, value in self.fields:
            lower = name.lower()
            if lower == b"content-length":
                if length_seen:
                    continue  # identical repeats (checked)
                length_seen = True
                value = b"%d" % self.content_length
            elif lower == b"transfer-encoding":
                continue
            add(name.decode("ascii"), value.decode("utf-8").strip())  # both checked in parse
        return headers


def _field(line: bytes) -> tuple[bytes, bytes]:
    if line[:1] in (b" ", b"\t"):
        raise BadRequestHead("folded header lines (starting with a space or tab) are not allowed")
    name, colon, value = line.partition(b":")
    if not colon:
        raise BadRequestHead("malformed header line: no colon")
    if not _TOKEN.fullmatch(name):
        # "Transfer-Encoding : chunked" among them: nothing may sit between name and colon
        raise BadRequestHead("malformed header field name")
    return name, value.strip(b" \t")


# -- the connection ---------------------------------------------------------------------------

#: a request body from this size on is kept in a temporary file while it arrives (as cyclone does)
SPOOL_BODY_AFTER = 100_000

#: ``refuse(..., discard=UNTIL_CLOSED)``: read and drop whatever follows until we hang up
UNTIL_CLOSED = -1


class FixedHTTPConnection(cyclone.httpserver.HTTPConnection):
    """cyclone's HTTP/1.1 connection with its parser defects answered.

    - Pipelined requests are served one after another (cyclone runs them at once and
      the answers interleave): the parser, not the socket, is paused while a request
      is served, so disconnects are still seen.
    - A request head cyclone cannot read or would read wrongly (see RequestHead) gets
      an answer instead of a silently dropped connection.
    - Empty lines before a request line are ignored (RFC 9112 2.2).

    Subclasses decide what to admit (``request_head_received``) and how an error
    answer looks (``error_answer``).
    """

    #: where the timers run; the module is imported by twistd's makeService (or by tests),
    #: once the reactor is chosen
    clock = reactor
    #: seconds a refused request's remaining bytes are read (and dropped) before we hang up
    linger = 10.0
    _linger_timer = None
    _discard_left = 0
    _discarding = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.request_callback = self._serve_one
        self.peer_ip = self._remote_ip  # the same for every request on this connection
        self._discarding = False
        self._discard_left = 0

    def connectionLost(self, reason) -> None:
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        super().connectionLost(reason)

    # -- what subclasses build on ---------------------------------------------------------

    def error_answer(self, status: int, reason: str, message: str) -> bytes:
        body = (message + "\r\n").encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode("ascii") + body

    def request_head_received(self, head: RequestHead) -> None:
        """Admit the request (the default) or ``refuse`` it."""
        self.serve_head(head)

    def serve_head(self, head: RequestHead) -> None:
        """Hand cyclone the request: served now, or once its body is in.

        What cyclone's own ``_on_headers`` does after it has parsed the head, from our
        parse: the head is read once, not twice.
        """
        request = cyclone.httpserver.HTTPRequest(
            connection=self,
            method=head.method.decode("ascii"),
            uri=head.origin_target().decode("utf-8"),
            version=head.version.decode("ascii"),
            headers=head.cyclone_headers(),
            remote_ip=self.peer_ip,
        )
        self._request = request
        length = head.content_length
        if not length:
            self.request_callback(request)
            return
        if head.expects_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # like cyclone: a large body waits in a temporary file, not in memory
        self._contentbuffer = (
            io.BytesIO() if length < SPOOL_BODY_AFTER else tempfile.TemporaryFile()  # noqa: SIM115 (freed once read)
        )
        self.content_length = length
        self.setRawMode()

    def receiving_head(self) -> bool:
        return bool(self._headersbuffer)

    def receiving_body(self) -> bool:
        return self._contentbuffer is not None

    def serving_request(self) -> bool:
        """A request has been read and its answer is not finished yet."""
        return self._request is not None

    def close_after_answer(self) -> None:
        """Hang up once the answer being written is done (no keep-alive)."""
        self.no_keep_alive = True

    def refuse(self, status: int, reason: str, message: str, discard: int = 0) -> None:
        """Answer ``status`` and hang up; nothing more on this connection is served.

        With ``discard`` (a byte count, or UNTIL_CLOSED) what the client still sends is
        read and dropped, never kept: closing with unread data would reset the
        connection, and the client might never see the answer.
        """
        self.transport.write(self.error_answer(status, reason, message))
        self._headersbuffer = []
        self._contentbuffer = None
        self.content_length = None
        self.paused = True  # parse nothing more that came on this connection
        unread = len(self.clearLineBuffer())
        if discard == 0 or (discard > 0 and unread >= discard):
            self.transport.loseConnection()
            return
        self._discarding = True
        self._discard_left = discard - unread if discard > 0 else UNTIL_CLOSED
        self._linger_timer = self.clock.callLater(self.linger, self.transport.loseConnection)

    # -- cyclone's parser, fixed -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            if self._discard_left != UNTIL_CLOSED:
                self._discard_left -= len(data)
                if self._discard_left <= 0:
                    self._discarding = False
                    self.transport.loseConnection()
            return
        super().dataReceived(data)

    def _serve_one(self, request) -> None:
        self.paused = True  # stop parsing pipelined bytes until this request is done
        # A request with a body arrives while the parser is still in raw mode (cyclone
        # goes back to line mode only after this call), so only a switch made by the
        # handler itself means that a WebSocket took the socket over.
        was_line_mode = self.line_mode
        self.factory(request)
        if was_line_mode and not self.line_mode:
            self.paused = False

    def finish(self) -> None:
        super().finish()
        transport = self.transport
        if not (transport.disconnecting or transport.disconnected):
            self.request_finished()
            if self.paused:
                self.paused = False
                self.dataReceived(b"")

    def request_finished(self) -> None:
        """The answer is out and the connection stays open for the next request."""

    def _on_headers(self, data: bytes) -> None:
        if not data.strip():
            return  # RFC 9112 2.2: empty lines before a request line are ignored
        try:
            head = RequestHead.parse(data)
        except BadRequestHead as bad:
            # cyclone would drop the connection without a word
            self.refuse(bad.status, bad.reason, str(bad))
            return
        self.request_head_received(head)

    def _on_request_body(self, data: bytes) -> None:
        try:
            super()._on_request_body(data)
        except UnicodeDecodeError:  # cyclone drops the connection silently
            self.refuse(400, "Bad Request", "the form body is not valid UTF-8")
