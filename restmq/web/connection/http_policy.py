"""The broker's HTTP rules: error bodies, size limits and timeouts.

BrokerHTTPConnection is the connection every broker listener uses. Its admission
flow, for each request, is: the head arrives line by line, bounded in bytes and in
header count (431 as soon as a limit is crossed, in ``lineReceived``); once whole, it
is checked (cyclone_fixes_connection.RequestHead: 400, 411, 505), then
``request_head_received`` asks ``admit_body`` (413 when it is too large) before
cyclone reads the body. Subclasses may refuse more in ``admit_body``: call
``self.refuse(...)`` and return False.
"""

from __future__ import annotations

import json

from twisted.logger import Logger

from restmq.defaults import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS
from restmq.web.connection.cyclone_fixes_connection import (
    UNTIL_CLOSED,
    FixedHTTPConnection,
    RequestHead,
)

log = Logger(namespace="restmq.http")


def error_body(message: str) -> str:
    """The body of every error answer: ``{"error": message}`` and CRLF."""
    return json.dumps({"error": message}) + "\r\n"


def raw_error_response(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection."""
    body = error_body(message).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BrokerHTTPConnection(FixedHTTPConnection):
    """The fixed HTTP/1.1 connection, with the broker's limits.

    - The request head (request line and headers) may hold at most ``max_header_bytes``
      bytes and ``max_headers`` header lines; past either, 431 at once, and the rest
      is read and dropped, never kept.
    - A body larger than ``max_body`` is refused with 413 as soon as its headers
      arrive; it is read and thrown away, never kept, so the client sees the answer.
    - A client that does not finish sending its headers within ``header_timeout``
      seconds is disconnected (also idle keep-alive connections), and so is one that
      then takes longer than that again to send the body.
    - Every error answer is ``{"error": ...}`` with ``Connection: close``.
    """

    _idle_timer = None
    _idle_deadline: float | None = None  # when the client's time runs out; None: not counting
    _head_bytes = 0
    _head_lines = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        settings = self.factory.settings
        self.max_header_bytes = settings.get("max_header_bytes") or DEFAULT_MAX_HEADER_BYTES
        self.max_headers = settings.get("max_headers") or DEFAULT_MAX_HEADERS
        self.header_timeout = settings.get("header_timeout")
        # A single line longer than the whole head may be is refused as it arrives.
        self.MAX_LENGTH = self.max_header_bytes
        self._arm_idle_timer()

    def error_answer(self, status: int, reason: str, message: str) -> bytes:
        return raw_error_response(status, reason, message)

    # -- timeouts -----------------------------------------------------------
    # Each request starts and stops the clock twice. Moving a deadline is cheap; a
    # reactor timer is not, so one timer per connection stays armed and, when it
    # fires early (the deadline moved on), is set again for what is left.

    def _arm_idle_timer(self) -> None:
        timeout = self.header_timeout
        if not timeout:
            return
        self._idle_deadline = self.clock.seconds() + timeout
        if self._idle_timer is None:
            self._idle_timer = self.clock.callLater(timeout, self._idle_check)

    def _cancel_idle_timer(self) -> None:
        self._idle_deadline = None

    def _stop_idle_timer(self) -> None:
        self._idle_deadline = None
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_check(self) -> None:
        self._idle_timer = None
        deadline = self._idle_deadline
        if deadline is None:
            return  # not counting now: the next _arm_idle_timer sets a timer again
        left = deadline - self.clock.seconds()
        if left > 1e-6:  # (not a rounding error of the clock's float arithmetic)
            self._idle_timer = self.clock.callLater(left, self._idle_check)
            return
        self._idle_timeout()

    def _idle_timeout(self) -> None:
        self._idle_deadline = None
        if self.receiving_head():
            log.info("dropping a client that did not finish its headers in time")
        elif self.receiving_body():
            log.info("dropping a client that did not finish its request body in time")
        self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        self._stop_idle_timer()
        super().connectionLost(reason)

    def request_finished(self) -> None:
        self._arm_idle_timer()

    # -- the request head ---------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if line:  # a blank line ends the head (or comes before one, and is ignored)
            self._head_bytes += len(line) + 2
            self._head_lines += 1
            if self._head_bytes > self.max_header_bytes:
                self._head_too_large(f"request head is over {self.max_header_bytes} bytes")
                return
            if self._head_lines - 1 > self.max_headers:  # the request line is no header
                self._head_too_large(f"request has more than {self.max_headers} header lines")
                return
        else:
            self._head_bytes = self._head_lines = 0
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Twisted calls this (in line mode only) for a line longer than MAX_LENGTH.
        self._head_too_large(f"request head is over {self.max_header_bytes} bytes")

    def _head_too_large(self, message: str) -> None:
        log.info(
            "refused a request head from {client}: {message}",
            client=self.transport.getPeer().host,
            message=message,
        )
        self._stop_idle_timer()
        self.refuse(431, "Request Header Fields Too Large", message, discard=UNTIL_CLOSED)

    # -- admission ----------------------------------------------------------

    def head_received(self) -> None:
        self._cancel_idle_timer()  # the head is checked next, then request_head_received

    def request_head_received(self, head: RequestHead) -> None:
        if not self.admit_body(head):
            return
        self.serve_head(head)
        if self.receiving_body():
            self._arm_idle_timer()  # the body, too, must arrive in time

    def admit_body(self, head: RequestHead) -> bool:
        """Whether the announced body may be read; refuses it (and says False) if not."""
        length = head.content_length
        max_body = self.factory.settings.get("max_body")
        if max_body and length > max_body:
            log.info(
                "refused a {length}-byte request body (limit {limit})",
                length=length,
                limit=max_body,
            )
            self.refuse(
                413,
                "Payload Too Large",
                f"request body of {length} bytes is over the limit of {max_body} bytes",
                discard=0 if head.expects_continue else length,
            )
            return False
        return True

    def body_received(self) -> None:
        self._cancel_idle_timer()  # finish() re-arms it for the next request
