"""A consumer loop: long-poll under a lease, hand each message to a function, ack it when
the function returns and release it when it raises; the lease is extended meanwhile."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from restmq.client.errors import BrokerUnavailable
from restmq.client.leasing import Lease
from restmq.client.message import Message

log = logging.getLogger("restmq.client")

UNAVAILABLE_PAUSE = 2.0  # seconds between takes while the broker cannot be reached


class Taker(Protocol):
    def lease(self, queue: str, seconds: int, *, wait: int | None, keep_alive: bool) -> Lease: ...


def consume(
    client: Taker,
    queue: str,
    handler: Callable[[Message], object],
    *,
    lease: int,
    wait: int,
    stop: threading.Event | None,
) -> int:
    """Run until ``stop`` is set or Ctrl-C; return how many messages were handled and acked.

    A handler that raises has its message released (it comes again, to this consumer or
    another; a queue's ``max_deliveries`` sends a message that always fails to
    ``<queue>:dead``) and the loop goes on. While the broker cannot be reached the loop
    waits and tries again; a refusal (a bad queue name, acl.conf) ends it with the error.
    ``stop`` is looked at between takes: at most ``wait`` seconds pass before it is seen.
    """
    stop = stop or threading.Event()
    handled = 0
    try:
        while not stop.is_set():
            try:
                taken = client.lease(queue, lease, wait=wait, keep_alive=True)
            except BrokerUnavailable as exc:
                log.warning("consuming %s: %s; trying again", queue, exc)
                stop.wait(UNAVAILABLE_PAUSE)
                continue
            if taken.message is None:
                continue
            key = taken.message.key
            try:
                with taken as message:
                    handler(message)
            except Exception:
                # The message was released (or its ack refused): say so, and go on.
                log.exception("consuming %s: handling %s failed", queue, key)
            else:
                handled += 1
    except KeyboardInterrupt:
        log.info("consuming %s: interrupted after %d messages", queue, handled)
    return handled
