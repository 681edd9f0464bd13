"""Admission of request bodies against the broker's memory budget (``--max-buffered``).

A request announces its body's size in Content-Length; the body is admitted only
if that many bytes fit in the budget, which request bodies share with the
backlogs of slow streaming consumers. When they do not fit, the consumers with
the largest backlogs are dropped first (their messages go back to their queues);
if the bytes still do not fit the request gets 503 "broker busy" before its body
is read, and nothing is stored. The reservation lasts until the request has been
answered or its connection is gone.
"""

from __future__ import annotations

from twisted.logger import Logger

from restmq.memory import Reclaimer
from restmq.web.compat import BrokerHTTPConnection, error_body

log = Logger(namespace="restmq.http")

#: seconds a refused client is asked to wait before it tries again
RETRY_AFTER = 2
#: a released body at least this large is worth giving its memory back to the system
RECLAIM_AFTER = 1024 * 1024
#: bytes of pipelined requests held while the one before is served; past this the
#: socket is not read until that request is done, so pipelining cannot bypass the budget
PIPELINE_BUFFER = 256 * 1024


def busy_response(message: str) -> bytes:
    """A complete 503 answer with Retry-After, closing the connection."""
    body = error_body(message).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def announced_body(head: bytes, max_body: int | None) -> int:
    """The Content-Length of a body the connection would go on to read, else 0
    (no body, or one refused anyway: chunked, malformed length, over ``max_body``)."""
    lines = head.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
    encoding = fields.get(b"transfer-encoding", b"").strip()
    if encoding and encoding != b"identity":
        return 0
    length = fields.get(b"content-length", b"0").strip()
    if not length.isdigit():
        return 0
    size = int(length)
    if max_body and size > max_body:
        return 0  # refused with 413 and thrown away as it arrives: it costs no memory
    return size


class BudgetedHTTPConnection(BrokerHTTPConnection):
    """A broker connection whose request bodies draw on the broker's memory budget."""

    _reserved = 0  # bytes this connection's current request body holds in the budget
    _reading_paused = False
    reclaimer: Reclaimer | None = None  # one per process, made on first use

    @property
    def _broker(self):
        return getattr(self.factory, "broker", None)

    def _on_headers(self, data):
        broker = self._broker
        budget = getattr(broker, "budget", None)
        if budget is not None and data.strip():
            size = announced_body(data, self.factory.settings.get("max_body"))
            if size and not self._reserve(broker, budget, size):
                self._refuse_busy(data, budget, size)
                return
        super()._on_headers(data)
        if self._contentbuffer is None:
            self._release()  # no body is being read after all (refused, or none)

    def _reserve(self, broker, budget, size: int) -> bool:
        if budget.try_reserve(size):
            self._reserved = size
            return True
        # Consumers that fell behind give way to producers.
        broker.consumers.shed(size)
        if budget.try_reserve(size):
            self._reserved = size
            return True
        return False

    def _refuse_busy(self, head: bytes, budget, size: int) -> None:
        log.info(
            "refused a {size}-byte request body: {used} of {limit} buffered bytes in use",
            size=size,
            used=budget.used,
            limit=budget.limit,
        )
        self._cancel_idle_timer()
        self.transport.write(
            busy_response(
                f"broker busy: a {size}-byte request body does not fit in the memory "
                f"for request bodies and consumer buffers ({budget.used} of {budget.limit} "
                "bytes in use, --max-buffered); try again later"
            )
        )
        self._headersbuffer = []
        if b"100-continue" in head.lower():
            self.paused = True  # the client waits for our word before it sends the body
            self.transport.loseConnection()
            return
        # The body is on its way: read and drop it, so the client sees the answer.
        self._discard_left = size
        self.setRawMode()
        self._linger_timer = self.clock.callLater(10, self.transport.loseConnection)

    def _release(self) -> None:
        size, self._reserved = self._reserved, 0
        if not size:
            return
        budget = getattr(self._broker, "budget", None)
        if budget is not None:
            budget.release(size)
        if size >= RECLAIM_AFTER:
            if BudgetedHTTPConnection.reclaimer is None:
                BudgetedHTTPConnection.reclaimer = Reclaimer(self.clock)
            BudgetedHTTPConnection.reclaimer.large_block_freed()

    # -- pipelining ---------------------------------------------------------

    def dataReceived(self, data):
        super().dataReceived(data)
        if self.paused and not self._reading_paused and len(self._buffer) > PIPELINE_BUFFER:
            self._reading_paused = True
            self.transport.pauseProducing()

    def finish(self):
        # Release first: finishing may start parsing the next pipelined request.
        self._release()
        super().finish()
        if self._reading_paused and not self.transport.disconnecting:
            self._reading_paused = False
            self.transport.resumeProducing()

    def connectionLost(self, reason):
        self._release()
        super().connectionLost(reason)
