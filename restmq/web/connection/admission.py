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
from restmq.web.connection.cyclone_fixes_connection import RequestHead
from restmq.web.connection.http_policy import BrokerHTTPConnection, raw_error_response

log = Logger(namespace="restmq.http")

#: seconds a refused client is asked to wait before it tries again
RETRY_AFTER = 2
#: a released body at least this large is worth giving its memory back to the system
RECLAIM_AFTER = 1024 * 1024
#: bytes of pipelined requests held while the one before is served; past this the
#: socket is not read until that request is done, so pipelining cannot bypass the budget
PIPELINE_BUFFER = 256 * 1024


class BudgetedHTTPConnection(BrokerHTTPConnection):
    """A broker connection whose request bodies draw on the broker's memory budget."""

    _reserved = 0  # bytes this connection's current request body holds in the budget
    _reading_paused = False
    reclaimer: Reclaimer | None = None  # one per process, made on first use

    @property
    def _broker(self):
        return getattr(self.factory, "broker", None)

    def admit_body(self, head: RequestHead) -> bool:
        if not super().admit_body(head):  # 413: thrown away as it arrives, costs nothing
            return False
        broker = self._broker
        budget = getattr(broker, "budget", None)
        size = head.content_length
        if budget is None or not size or self._reserve(broker, budget, size):
            return True
        self._refuse_busy(head, budget, size)
        return False

    def error_answer(self, status: int, reason: str, message: str) -> bytes:
        headers = {"Retry-After": str(RETRY_AFTER)} if status == 503 else None
        return raw_error_response(status, reason, message, headers)

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

    def body_copied(self, size: int) -> None:
        # Copies of the body count too (the request is already admitted: later
        # requests wait for them to go), so the budget is what is really held.
        budget = getattr(self._broker, "budget", None)
        if budget is not None and self._reserved:
            budget.reserve_anyway(size)
            self._reserved += size

    def _refuse_busy(self, head: RequestHead, budget, size: int) -> None:
        log.info(
            "refused a {size}-byte request body: {used} of {limit} buffered bytes in use",
            size=size,
            used=budget.used,
            limit=budget.limit,
        )
        self.refuse(
            503,
            "Service Unavailable",
            f"broker busy: a {size}-byte request body does not fit in the memory "
            f"for request bodies and consumer buffers ({budget.used} of {budget.limit} "
            "bytes in use, --max-buffered); try again later",
            # a client that waits for 100 Continue sends nothing more: hang up at once;
            # otherwise the body is on its way: read and drop it, so the client sees the answer
            discard=0 if head.expects_continue else size,
        )

    def _release(self) -> None:
        size, self._reserved = self._reserved, 0
        if not size:
            return
        budget = getattr(self._broker, "budget", None)
        if size < RECLAIM_AFTER:
            if budget is not None:
                budget.release(size)
            return
        if BudgetedHTTPConnection.reclaimer is None:
            BudgetedHTTPConnection.reclaimer = Reclaimer(self.clock)
        if budget is None:
            BudgetedHTTPConnection.reclaimer.large_block_freed()
        else:  # a failed request may still hold the body in a cycle: counted until collected
            BudgetedHTTPConnection.reclaimer.release_after_collection(lambda: budget.release(size))

    # -- pipelining ---------------------------------------------------------

    def dataReceived(self, data):
        super().dataReceived(data)
        if not self._reading_paused and self.held_bytes() > PIPELINE_BUFFER:
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
