"""The RestMQ client: every call to a broker, as a method."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import httpx

from restmq.client import limits
from restmq.client.consume import consume
from restmq.client.errors import RestMQError
from restmq.client.leasing import Lease
from restmq.client.message import Message
from restmq.client.stream import Stream
from restmq.client.transport import Transport, path

DEFAULT_URL = "http://127.0.0.1:8888"
POLICIES = ("broadcast", "roundrobin")


class Client:
    """A connection pool to one broker. Every call has a timeout (``timeout`` seconds, plus
    the ``wait`` of a long poll); calls that are safe to repeat are tried again up to
    ``retries`` times when the broker is unavailable. Safe to share between threads.

    >>> from restmq.client import Client
    >>> with Client("http://127.0.0.1:8888") as client:   # doctest: +SKIP
    ...     key = client.push("jobs", "hello")
    ...     client.pop("jobs").value
    'hello'
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
    ) -> None:
        self._transport = Transport(
            url, user=user, password=password, timeout=timeout, retries=retries
        )
        self.url = self._transport.url

    def close(self) -> None:
        """Close the pooled connections (open streams end with them)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- producing -------------------------------------------------------------------------

    def push(
        self, queue: str, value: Any, *, ttl: int | None = None, delay: int | None = None
    ) -> str:
        """Add a message; return its key (``jobs:1``).

        A value that is not a str is sent as its JSON text. ``ttl``: the message expires
        that many seconds after the push; ``delay`` (1-604800 s): it is not handed out
        before then. The push carries an Idempotency-Key
        and is tried again with the same key after a 503, a 504 or a lost answer, so a
        broker that honours the key stores it once.

        >>> client.push("jobs", "resize photo 7")            # doctest: +SKIP
        'jobs:1'
        >>> client.push("jobs", {"photo": 7}, ttl=3600)      # doctest: +SKIP
        'jobs:2'
        """
        form = {"value": value if isinstance(value, str) else json.dumps(value)}
        form.update({name: str(number) for name, number in _timing(ttl, delay).items()})
        response = self._transport.request(
            "POST", path("q", queue), data=form, headers=_idempotency(), replayable=True
        )
        return response.text.strip()

    def push_many(
        self,
        queue: str,
        values: Iterable[Any],
        *,
        ttl: int | None = None,
        delay: int | None = None,
    ) -> list[str]:
        """Add 1-1000 messages in one atomic batch; return their keys, in order.

        >>> client.push_many("jobs", ["a", "b", {"c": 3}])    # doctest: +SKIP
        ['jobs:3', 'jobs:4', 'jobs:5']
        """
        batch = list(values)
        limits.whole_number("the number of values", len(batch), 1, limits.MAX_BATCH)
        body = {"values": batch, **_timing(ttl, delay)}
        response = self._transport.request(
            "POST",
            path("q", queue),
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **_idempotency()},
            replayable=True,
        )
        return _json(response)

    # -- taking ----------------------------------------------------------------------------

    def pop(self, queue: str, *, wait: int | None = None) -> Message | None:
        """Take the oldest message off the queue (at most once: it is deleted); None when
        the queue is empty, or nothing came within ``wait`` seconds (0-60).

        >>> client.pop("jobs")                               # doctest: +SKIP
        Message(queue='jobs', key='jobs:1', value='resize photo 7', count=0, ...)
        """
        params = _wait(wait)
        answer = self._take(queue, params, replayable=False)
        return None if answer is None else Message.from_answer(queue, answer, self)

    def pop_many(self, queue: str, n: int, *, wait: int | None = None) -> list[Message]:
        """Take up to ``n`` (1-1000) messages; an empty list when there were none.

        >>> [m.value for m in client.pop_many("jobs", 10)]   # doctest: +SKIP
        ['a', 'b', '{"c": 3}']
        """
        params = {"n": limits.whole_number("n", n, 1, limits.MAX_BATCH), **_wait(wait)}
        answer = self._take(queue, params, replayable=False)
        return [Message.from_answer(queue, item, self) for item in answer or []]

    def lease(
        self, queue: str, seconds: int, *, wait: int | None = None, keep_alive: bool = False
    ) -> Lease:
        """Take the oldest message under a lease of ``seconds`` (1-43200), long-polling up to
        ``wait`` seconds (0-60) when the queue is empty. The message stays with the broker
        until acked; if the lease runs out first it goes back to the head of the queue.

        As a context manager the lease gives the message, or None when there was none, and
        acks it when the block ends normally, releases it when the block raises. With
        ``keep_alive`` the lease is extended every third of the lease while the block runs.

        >>> with client.lease("jobs", 30, wait=20) as message:   # doctest: +SKIP
        ...     if message is not None:
        ...         resize(message.value)                  # acked after this line
        """
        limits.whole_number("lease", seconds, 1, limits.MAX_LEASE)
        answer = self._take(queue, {"lease": seconds, **_wait(wait)}, replayable=True)
        message = None if answer is None else Message.from_answer(queue, answer, self)
        return Lease(message, seconds, keep_alive=keep_alive)

    def lease_many(
        self, queue: str, seconds: int, n: int, *, wait: int | None = None
    ) -> list[Message]:
        """Take up to ``n`` (1-1000) messages under a lease each; ack them one by one.

        >>> for message in client.lease_many("jobs", 60, 10):   # doctest: +SKIP
        ...     resize(message.value)
        ...     message.ack()
        """
        params = {
            "lease": limits.whole_number("lease", seconds, 1, limits.MAX_LEASE),
            "n": limits.whole_number("n", n, 1, limits.MAX_BATCH),
            **_wait(wait),
        }
        answer = self._take(queue, params, replayable=True)
        return [Message.from_answer(queue, item, self) for item in answer or []]

    def _take(self, queue: str, params: dict[str, int], *, replayable: bool) -> Any:
        """A GET on the queue: the answer's JSON, None for a 204. A leased take may be
        replayed: a message taken twice comes back when the first lease runs out."""
        wait = params.get("wait", 0)
        response = self._transport.request(
            "GET",
            path("q", queue),
            params=params,
            expect=(200, 204),
            replayable=replayable,
            read_timeout=self._transport.timeout + wait if wait else None,
        )
        return None if response.status_code == 204 else _json(response)

    # -- settling leases -------------------------------------------------------------------

    def ack(self, queue: str, receipt: str) -> None:
        """Acknowledge the delivery ``receipt`` (``jobs:5@1``): the message is deleted.
        LeaseGone when that lease is gone.

        >>> client.ack("jobs", "jobs:5@1")                    # doctest: +SKIP
        """
        self._transport.request(
            "DELETE", path("q", queue), params={"receipt": receipt}, lease_call=True
        )

    def extend(self, queue: str, receipt: str, seconds: int) -> None:
        """Make the lease of ``receipt`` end ``seconds`` (1-43200) from now.

        >>> client.extend("jobs", "jobs:5@1", 600)            # doctest: +SKIP
        """
        limits.whole_number("lease", seconds, 1, limits.MAX_LEASE)
        self._change_lease(queue, receipt, seconds, replayable=True)

    def release(self, queue: str, receipt: str) -> None:
        """End the lease of ``receipt`` now: the message goes back to the head of the queue.

        >>> client.release("jobs", "jobs:5@1")                # doctest: +SKIP
        """
        self._change_lease(queue, receipt, 0, replayable=False)

    def _change_lease(self, queue: str, receipt: str, seconds: int, *, replayable: bool) -> None:
        self._transport.request(
            "POST",
            path("q", queue),
            data={"receipt": receipt, "lease": str(seconds)},
            lease_call=True,
            replayable=replayable,
        )

    # -- consuming -------------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        handler: Callable[[Message], object],
        *,
        lease: int = 30,
        wait: int = 20,
        stop: threading.Event | None = None,
    ) -> int:
        """Handle the queue's messages one by one, at least once, until ``stop`` is set or
        Ctrl-C; return how many were handled. Each message is taken under a lease of
        ``lease`` seconds (long-polling ``wait`` seconds), acked when ``handler`` returns,
        released when it raises; the lease is extended every third of the lease while the handler
        runs, so a slow handler keeps its message.

        >>> stop = threading.Event()                         # doctest: +SKIP
        >>> client.consume("jobs", lambda m: resize(m.value), stop=stop)   # doctest: +SKIP
        """
        limits.whole_number("lease", lease, 1, limits.MAX_LEASE)
        limits.whole_number("wait", wait, 0, limits.MAX_WAIT)
        return consume(self, queue, handler, lease=lease, wait=wait, stop=stop)

    def stream(
        self,
        queue: str,
        *,
        lease: int | None = None,
        prefetch: int | None = None,
        idle_timeout: float | None = None,
    ) -> Stream:
        """Open the queue's Server-Sent Events stream: the backlog, then every new message.

        Without ``lease`` a message is taken off the queue as it is sent (at most once).
        With ``lease`` (1-43200 s) each message comes under a lease and must be acked
        (``message.ack()``); at most ``prefetch`` (1-1000, the broker's default 10) are
        unacked at a time. ``idle_timeout``: give up when nothing, not even the broker's
        keep-alive, came for that long (None: wait for ever).

        >>> with client.stream("jobs", lease=60) as messages:   # doctest: +SKIP
        ...     for message in messages:
        ...         resize(message.value)
        ...         message.ack()
        """
        params: dict[str, Any] = {}
        if lease is not None:
            params["lease"] = limits.whole_number("lease", lease, 1, limits.MAX_LEASE)
        if prefetch is not None:
            if lease is None:
                raise ValueError("prefetch is the window of a leased stream: give lease too")
            params["prefetch"] = limits.whole_number("prefetch", prefetch, 1, limits.MAX_PREFETCH)
        return Stream(self._transport, self, queue, params, idle_timeout)

    # -- administration --------------------------------------------------------------------

    def stats(self, queue: str | None = None) -> dict[str, Any]:
        """The broker's figures: of every queue (``{"queues": {...}, "count": N, ...}``), or
        of one (``{"queue": "jobs", "len": 3, "consumers": 0, "leased": 0, ...}``).

        >>> client.stats("jobs")["len"]                      # doctest: +SKIP
        3
        """
        target = "/stats/" if queue is None else path("stats", queue)
        return _json(self._transport.request("GET", target, replayable=True))

    def purge(self, queue: str) -> bool:
        """Delete every message of the queue, leased ones too, and end its streams; True
        when anything was there.

        >>> client.purge("jobs")                             # doctest: +SKIP
        True
        """
        answer = _json(self._transport.request("DELETE", path("q", queue)))
        return bool(answer.get("status"))

    def policy(self, queue: str) -> dict[str, Any]:
        """The queue's delivery policy: ``{"queue": ..., "value": "broadcast"}``, plus
        ``"max_deliveries"`` once set.

        >>> client.policy("jobs")["value"]                   # doctest: +SKIP
        'broadcast'
        """
        return _json(self._transport.request("GET", path("p", queue), replayable=True))

    def set_policy(
        self, queue: str, policy: str | None = None, *, max_deliveries: int | None = None
    ) -> None:
        """Set the delivery policy (``broadcast`` or ``roundrobin``) and/or how often a
        message may be leased before it goes to ``<queue>:dead`` (0-1000, 0: no limit).

        >>> client.set_policy("jobs", "roundrobin", max_deliveries=5)   # doctest: +SKIP
        """
        form: dict[str, str] = {}
        if policy is not None:
            if policy not in POLICIES:
                raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
            form["policy"] = policy
        if max_deliveries is not None:
            form["max_deliveries"] = str(
                limits.whole_number("max_deliveries", max_deliveries, 0, 1000)
            )
        if not form:
            raise ValueError("give a policy, max_deliveries, or both")
        self._transport.request("POST", path("p", queue), data=form, replayable=True)

    def start(self, queue: str) -> None:
        """Let the queue's streams deliver again (they get the backlog).

        >>> client.start("jobs")                             # doctest: +SKIP
        """
        self._control(queue, "start")

    def stop(self, queue: str) -> None:
        """Stop delivering to the queue's streams; messages wait, pops still work.

        >>> client.stop("jobs")                              # doctest: +SKIP
        """
        self._control(queue, "stop")

    def _control(self, queue: str, status: str) -> None:
        self._transport.request(
            "POST", path("control", queue), data={"status": status}, replayable=True
        )

    def health(self) -> dict[str, Any]:
        """``/health``: ``{"status": "ok", "storage": "up", "version": ..., "pid": ...}``;
        BrokerUnavailable while its storage is down.

        >>> client.health()["status"]                        # doctest: +SKIP
        'ok'
        """
        return _json(self._transport.request("GET", "/health", replayable=True))


def _idempotency() -> dict[str, str]:
    """A new Idempotency-Key, a structured-field string, for one push and its retries."""
    return {"Idempotency-Key": f'"{uuid.uuid4()}"'}


def _timing(ttl: int | None, delay: int | None) -> dict[str, int]:
    timing = {}
    if ttl is not None:
        timing["ttl"] = limits.whole_number("ttl", ttl, 1, limits.MAX_TTL)
    if delay is not None:
        timing["delay"] = limits.whole_number("delay", delay, 1, limits.MAX_DELAY)
    return timing


def _wait(wait: int | None) -> dict[str, int]:
    if wait is None:
        return {}
    return {"wait": limits.whole_number("wait", wait, 0, limits.MAX_WAIT)}


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        raise RestMQError(
            f"the answer to {response.request.method} {response.request.url.path} is not JSON:"
            " is the URL a RestMQ broker's?",
            status=response.status_code,
        ) from None
