"""cyclone 1.3's HTTP connection with its request parser fixed: the head parsed once,
strictly (RFC 9112), and requests served one at a time.

This module and ``cyclone_fixes`` (answers and handlers) are the only code that
touches cyclone's private state (the parser's buffers, ``paused``, ``_on_headers``,
``_on_request_body``); the broker's connection layers (http_policy, admission,
draining) build on the public methods and hooks of ``FixedHTTPConnection``.
docs/cyclone.md lists each defect with its symptom and test.
"""

from __future__ import annotations

import io
import re
import tempfile
from urllib.parse import urlsplit

import cyclone.httpserver
import cyclone.httputil
from twisted.internet import reactor

from restmq.web.connection.form_body import NotUtf8, parse_form

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

    def stop_parsing(self) -> None:
        """Parse nothing more that came, or comes, on this connection."""
        self.paused = True

    def held_bytes(self) -> int:
        """Bytes of later (pipelined) requests received and held, unparsed, while the
        parser waits for the answer being served."""
        return len(self._buffer) if self.paused else 0

    def head_received(self) -> None:
        """A request head has arrived whole; it is checked next."""

    def body_received(self) -> None:
        """A request body has arrived whole; the request is served next."""

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
        self.stop_parsing()
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
        self.head_received()
        try:
            head = RequestHead.parse(data)
        except BadRequestHead as bad:
            # cyclone would drop the connection without a word
            self.refuse(bad.status, bad.reason, str(bad))
            return
        self.request_head_received(head)

    def _on_request_body(self, data: bytes) -> None:
        self.body_received()
        request = self._request
        if request.method in ("POST", "PATCH", "PUT") and request.headers.get(
            "Content-Type", ""
        ).startswith("application/x-www-form-urlencoded"):
            # Read as bytes (form_body): cyclone would hold the body three times over.
            request.body = data
            try:
                form = parse_form(data)
            except NotUtf8 as error:  # cyclone drops the connection silently
                self.refuse(400, "Bad Request", str(error))
                return
            for name, values in form.fields.items():
                request.arguments.setdefault(name, []).extend(values)
            request.undecodable_form_field = form.undecodable
            if form.copied:
                self.body_copied(form.copied)
            self.request_callback(request)
            return
        super()._on_request_body(data)  # other bodies are kept as they came

    def body_copied(self, size: int) -> None:
        """The body's fields hold ``size`` bytes besides the body (unquoted values)."""
