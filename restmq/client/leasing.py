"""A leased take as a ``with`` block: acked when the block ends, released when it raises;
and the helper thread that keeps extending a lease while slow work goes on."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from restmq.client.errors import LeaseGone, RestMQError
from restmq.client.message import Message

log = logging.getLogger("restmq.client")


class LeaseKeeper:
    """Extends a message's lease every third of the lease until stopped, so that work slower than
    the lease keeps the message."""

    def __init__(self, message: Message, seconds: int) -> None:
        self._message = message
        self._seconds = seconds
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"restmq-lease-{message.key}", daemon=True
        )

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        # A third: two thirds of the lease are left for an extension that is slow or retried.
        while not self._done.wait(self._seconds / 3):
            try:
                self._message.extend(self._seconds)
            except LeaseGone:
                log.warning("the lease of %s is gone; no longer extending it", self._message.key)
                return
            except RestMQError as exc:
                log.warning("could not extend the lease of %s: %s", self._message.key, exc)


class Lease:
    """What :meth:`restmq.client.Client.lease` took: ``message``, or None when the queue
    was empty. As a context manager it gives the message (or None) and settles it when
    the block ends: an ack when it ends normally, a release (the message back at the head
    of its queue) when it raises. A message acked or released inside the block is left
    as it is. With ``keep_alive`` the lease is extended every third of the lease while the block
    runs.

    >>> with client.lease("jobs", 30) as message:   # doctest: +SKIP
    ...     if message is not None:
    ...         work(message.value)
    """

    def __init__(self, message: Message | None, seconds: int, *, keep_alive: bool = False) -> None:
        self.message = message
        self.seconds = seconds
        self._keep_alive = keep_alive
        self._keeper: LeaseKeeper | None = None

    def __bool__(self) -> bool:
        return self.message is not None

    def __enter__(self) -> Message | None:
        if self.message is not None and self._keep_alive:
            self._keeper = LeaseKeeper(self.message, self.seconds).start()
        return self.message

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        if self.message is None or self.message.settled:
            return
        if exc_type is None:
            self.message.ack()  # LeaseGone here: the work was done, but someone else has it
            return
        try:
            self.message.release()
        except RestMQError as failure:
            # The block's own exception is the one to see; the message comes back anyway
            # when its lease runs out.
            log.warning("could not release %s: %s", self.message.key, failure)
