"""StreamConsumer: one streaming consumer (COMET, SSE or WebSocket) and its flow control.

Each transport (restmq.web.handlers.streaming, .websocket) subclasses it with how it
encodes, writes and closes. The consumer is the push producer of its connection:
while Twisted pauses it, what it is sent waits in its backlog, whose bytes are held
in the broker's memory budget.

A message counts as delivered once its peer's TCP acknowledged it, not when it was
written (restmq.delivery.socket_acks): until then the consumer holds it, and what it
holds unacknowledged when it goes goes back to the queue like its backlog. A
transport that cannot tell (``acks`` None: no such count on this system) keeps the
old rule, written means delivered.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from restmq.delivery.copies import Copies
from restmq.delivery.socket_acks import Acknowledgements, SentNotAcked
from restmq.engine.messages import LeasedMessage, Message, TakenMessage

if TYPE_CHECKING:
    from restmq.delivery.consumers import ConsumerRegistry

log = Logger(namespace="restmq.consumers")

#: WebSocket close codes (RFC 6455 7.4.1) for why a stream ends; HTTP streams ignore them
CLOSE_NORMAL = 1000  # e.g. the queue was purged
CLOSE_GOING_AWAY = 1001  # the broker is stopping

NEVER_HANDED = sys.maxsize  # where a write the connection refused ends: never acknowledged


@implementer(IPushProducer)
class StreamConsumer:
    """One streaming consumer (COMET, SSE or WebSocket) with flow control.

    It is registered as the push producer of its connection, so Twisted pauses it
    when the socket's send buffer is full. While paused it takes no roundrobin
    messages and buffers broadcast ones, up to the registry's ``max_backlog``; a consumer
    that falls further behind is disconnected so that it holds nobody back.
    """

    kind = "stream"

    def __init__(self, queue: str, peer: str) -> None:
        self.queue = queue
        self.peer = peer
        self.registry: ConsumerRegistry | None = None
        self.gone = False
        self._paused = False
        # Messages waiting for the socket: (message, encoded, its Copies when it may go back)
        self._backlog: deque[tuple[Message, bytes, Copies | None]] = deque()
        self._backlog_bytes = 0
        self._reserved = 0  # backlog bytes held in the registry's memory budget
        # the connection's count of acknowledged bytes; None: written means delivered
        self.acks: Acknowledgements | None = None
        # written, not known acknowledged: the Copies of messages that may go back,
        # the receipts of leased ones
        self._sent: SentNotAcked[Copies | str] = SentNotAcked()
        self.lease: int | None = None  # seconds each message is leased for; None: unleased
        self.prefetch = 0  # unacknowledged messages a leased consumer may hold

    def use_lease(self, seconds: int, prefetch: int) -> None:
        """Make this a leased consumer: messages under a lease of ``seconds``, at most
        ``prefetch`` of them unacknowledged (restmq.delivery.leased_streams)."""
        self.lease = seconds
        self.prefetch = prefetch

    @property
    def leased(self) -> bool:
        return self.lease is not None

    @property
    def backlog_bytes(self) -> int:
        """Bytes of messages waiting in the broker for this consumer's socket."""
        return self._backlog_bytes

    def unwritten_receipts(self) -> set[str]:
        """The receipts of the leased messages its peer did not get: still waiting in
        the backlog, or written and not acknowledged by the peer's TCP."""
        self.settle_sent()
        waiting = {m.receipt for m, _, _ in self._backlog if isinstance(m, LeasedMessage)}
        return waiting | {item for item in self._sent if isinstance(item, str)}

    def settle_sent(self) -> bool:
        """Count what the peer acknowledged as delivered; True when nothing it was
        written is left unacknowledged (or its connection can no longer tell)."""
        if self.acks is None or not self._sent:
            return True
        done = self._sent.settle(self.acks)
        if done is None:
            return True  # waiting will not tell more
        for item in done:
            if isinstance(item, Copies):
                item.release(written=True)
        return not self._sent

    # -- what a transport implements ---------------------------------------

    def encode(self, message: Message) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """End the stream politely (queue purged, broker stopping); ``code`` is the
        WebSocket close code that goes with ``reason``."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection at once."""
        raise NotImplementedError

    def heartbeat(self) -> None:
        """Called every ``--sse-heartbeat`` seconds; streams that need keep-alives send one."""

    # -- delivery -----------------------------------------------------------

    def can_take_more(self) -> bool:
        return not self.gone and not self._paused and not self._backlog

    def send(self, message: Message, copies: Copies | None = None) -> bool:
        """Deliver or buffer ``message``; False when the consumer is gone (not taken).

        ``copies``: where this broker took the message, so that it goes back to the
        queue if no consumer ever writes it (None: another broker took it).
        """
        if self.gone:
            return False
        data = self.encode(message)
        if self._paused or self._backlog:
            if copies is not None:
                copies.take()
            self._backlog.append((message, data, copies))
            self._backlog_bytes += len(data)
            registry = self.registry
            if registry is None:
                return True
            if self._backlog_bytes > registry.max_backlog:
                self._too_slow()
            elif registry.reserve_backlog(self, len(data)):
                self._reserved += len(data)
            elif not self.gone:
                self._too_slow()  # the budget is held by request bodies
            # else: shed to make room; what it held, this message too, went back
            return True
        if copies is not None:
            copies.take()  # held until its peer acknowledges it
        self._write_message(message, data, copies)
        return True

    def _write_message(self, message: Message, data: bytes, copies: Copies | None) -> None:
        """Write ``message`` (its ``copies`` held by this consumer) and remember it
        until its peer acknowledges it."""
        acks = self.acks
        before = acks.handed if acks is not None else 0
        self.write(data)
        if acks is None:  # the old rule: written means delivered
            if copies is not None:
                copies.release(written=True)
            return
        item = copies if copies is not None else getattr(message, "receipt", None)
        if item is None:
            return
        # Nothing handed (the response had ended): never acknowledged, it goes back.
        end = acks.handed if acks.handed > before else NEVER_HANDED
        if self._sent.record(end, item):
            self.settle_sent()

    def take_undelivered(self) -> list[TakenMessage]:
        """Let go of every message the peer did not get (the backlog, and what it was
        written without acknowledging it); return those that must go back to the queue
        (no consumer got them and no other consumer still holds them)."""
        self.settle_sent()
        # oldest first: what was written, then what waited behind it
        held = [item for item in self._sent.take_all() if isinstance(item, Copies)]
        held += [copies for _, _, copies in self._backlog if copies is not None]
        back = [copies.message for copies in held if copies.release()]
        self._backlog.clear()
        self._backlog_bytes = 0
        self._give_back(self._reserved)
        return back

    def _give_back(self, size: int) -> None:
        size = min(size, self._reserved)
        self._reserved -= size
        if size and self.registry is not None:
            self.registry.budget.release(size)

    def _too_slow(self) -> None:
        log.warn(
            "{kind} consumer {peer} of queue {queue} fell {bytes} bytes behind; disconnecting it",
            kind=self.kind,
            peer=self.peer,
            queue=self.queue,
            bytes=self._backlog_bytes,
        )
        self.drop()

    def drop(self) -> None:
        """Disconnect at once; what only this consumer held goes back to the queue."""
        if self.registry is not None:
            self.registry.remove(self)
        self.gone = True
        self.abort()

    # -- IPushProducer ------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._backlog and not self._paused and not self.gone:
            message, data, copies = self._backlog.popleft()
            self._backlog_bytes -= len(data)
            self._give_back(len(data))
            self._write_message(message, data, copies)  # its hold passes to _sent
        if not self._paused and not self.gone and self.registry is not None:
            self.registry.wake(self.queue)

    def stopProducing(self) -> None:
        # Twisted calls this as the connection is lost, before it closes the socket:
        # the last moment the kernel can say what the peer acknowledged.
        self.gone = True
        self.settle_sent()
