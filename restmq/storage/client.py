"""A txredisapi connection pool that fails fast instead of hanging.

txredisapi queues calls without limit while it is disconnected and retries its
connections with a backoff of up to ten seconds. A broker must instead answer
503 at once when Redis is away and resume by itself when it is back, so this
module wraps the pool: every call has a timeout, calls made while no connection
is up fail immediately, in-flight work is bounded, and reconnects are quick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import txredisapi
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from restmq.errors import InvalidArgument, StorageUnavailable

log = Logger(namespace="restmq.storage")

# Errors that mean "Redis could not be asked" rather than "Redis said no".
_UNAVAILABLE = (
    txredisapi.ConnectionError,  # includes txredisapi.TimeoutError
    defer.CancelledError,
    defer.TimeoutError,
    error.ConnectionLost,
    error.ConnectionDone,
)
# Replies a server gives while it cannot serve yet (restart, failover).
_TRANSIENT_REPLIES = ("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "BUSY ")


@dataclass(frozen=True)
class RedisAddress:
    """Where the Redis server is: a unix socket path, or a host and port."""

    host: str | None = None
    port: int | None = None
    socket: str | None = None

    def describe(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"

    def endpoint(self, reactor, timeout: float):
        if self.socket:
            return UNIXClientEndpoint(reactor, self.socket, timeout=timeout)
        return HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)


class LuaScript:
    """A Lua script, called by its SHA1 and loaded on the server on first use."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


def encode_command(args: Sequence[Any]) -> bytes:
    """One Redis command in RESP: text as UTF-8, whole numbers in decimal."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _BrokerProtocol(txredisapi.RedisProtocol):
    """txredisapi's protocol (hiredis parser) with a lean way to send a command."""

    def send(self, args: Sequence[Any]) -> defer.Deferred:
        """Write one command; its reply (a ResponseError becomes a failure).

        txredisapi's execute_command adds a Deferred, closures and kwargs handling
        per call that we never use. Cancelling the returned Deferred is safe: the
        reply queue keeps a placeholder, so later replies stay in line.
        """
        self.transport.write(encode_command(args))
        return self.replyQueue.get().addCallback(self.handle_reply)


class _ObservedFactory(txredisapi.RedisFactory):
    """A pool factory that reports when the first connection comes or the last goes."""

    protocol = _BrokerProtocol

    # Reconnect fast: the library's default backoff grows to 10 s per slot.
    initialDelay = 0.1
    maxDelay = 1.0

    on_state_change: Callable[[bool], None] = staticmethod(lambda up: None)

    def addConnection(self, conn):
        before = self.size
        super().addConnection(conn)
        if before == 0 and self.size > 0:
            self.on_state_change(True)

    def delConnection(self, conn):
        before = self.size
        super().delConnection(conn)
        if before > 0 and self.size == 0:
            self.on_state_change(False)


class RedisClient:
    """Every Redis call the broker makes goes through here."""

    batch_per_connection = 32

    def __init__(
        self,
        reactor: IReactorTime,
        address: RedisAddress,
        *,
        poolsize: int = 10,
        dbid: int = 0,
        password: str | None = None,
        call_timeout: float = 1.5,
        max_inflight: int = 1000,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.call_timeout = call_timeout
        self.poolsize = poolsize
        self.dbid = dbid
        self._password = password
        self._max_inflight = max_inflight
        self._inflight = 0
        self._factory: _ObservedFactory | None = None
        self._ever_connected = False
        self._closing = False
        self._listeners: list[Callable[[bool], None]] = []

    # -- life cycle ---------------------------------------------------------

    def connect(self) -> None:
        factory = _ObservedFactory(
            self.address.describe(),
            self.dbid,
            self.poolsize,
            isLazy=True,
            charset="utf-8",
            password=self._password,
            convertNumbers=False,  # else a body such as "007" comes back as 7
        )
        factory.on_state_change = self._state_changed
        factory.startConnecting(self.address.endpoint(self.reactor, timeout=2))
        self._factory = factory

    def disconnect(self) -> defer.Deferred:
        self._closing = True
        factory, self._factory = self._factory, None
        if factory is None:
            return defer.succeed(None)
        return factory.disconnect()

    def on_state_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` when storage comes up, ``listener(False)`` when it goes."""
        self._listeners.append(listener)

    def _state_changed(self, up: bool) -> None:
        where = self.address.describe()
        if self._closing:
            log.info("storage disconnected from Redis at {where}", where=where)
        elif up and not self._ever_connected:
            log.info("storage connected: Redis at {where}", where=where)
        elif up:
            log.info("storage reconnected: Redis at {where}", where=where)
        else:
            log.warn("storage lost: no connection to Redis at {where}", where=where)
        self._ever_connected = self._ever_connected or up
        for listener in self._listeners:
            listener(up)

    @property
    def connected(self) -> bool:
        return self._factory is not None and self._factory.size > 0

    @property
    def pool_size_now(self) -> int:
        """How many pool connections are up."""
        return self._factory.size if self._factory is not None else 0

    # -- calls --------------------------------------------------------------

    def execute(self, *command: Any) -> defer.Deferred:
        """Run one Redis command; fail with StorageUnavailable rather than wait."""
        connection = self._connection()
        if connection is None:
            return self._unavailable()
        return self._track(self._send(connection, command))

    def run_script(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[Any] = ()
    ) -> defer.Deferred:
        """Run a Lua script by SHA1 in one round trip; load it only if the server lacks it."""
        connection = self._connection()
        if connection is None:
            return self._unavailable()
        d = self._send(connection, ("EVALSHA", script.sha, len(keys), *keys, *args))

        def load_if_missing(failure):
            failure.trap(txredisapi.ResponseError)
            if not str(failure.value).startswith("NOSCRIPT"):
                return failure
            return self._send(connection, ("EVAL", script.source, len(keys), *keys, *args))

        return self._track(d.addErrback(load_if_missing))

    @staticmethod
    def _send(connection: _BrokerProtocol, command: Sequence[Any]) -> defer.Deferred:
        try:
            return connection.send(command)
        except UnicodeEncodeError:
            return defer.fail(InvalidArgument("text that is not valid Unicode (a lone surrogate)"))

    def _connection(self):
        """A live pool connection; None when there is none or too much is in flight.

        This is the hot path of every request, so it skips txredisapi's handler
        (a closure and an inlineCallbacks generator per call): none of our calls
        needs a connection to itself (no MULTI, no blocking pops). Calls go to the
        first live connection until it has ``batch_per_connection`` replies
        outstanding: commands issued in one reactor turn then leave in one write
        (measured 5-10% more requests/s than spreading them), and a connection
        stuck behind a slow reply is passed over.
        """
        factory = self._factory
        if factory is None or self._inflight >= self._max_inflight:
            return None
        least, least_waiting = None, None
        for connection in factory.pool:
            if not connection.connected:
                continue
            waiting = len(connection.replyQueue.waiting)
            if waiting < self.batch_per_connection:
                return connection
            if least_waiting is None or waiting < least_waiting:
                least, least_waiting = connection, waiting
        return least

    def _unavailable(self) -> defer.Deferred:
        if self._factory is not None and self._inflight >= self._max_inflight:
            reason = f"broker busy: {self._inflight} Redis calls already in flight"
        else:
            reason = f"no connection to {self._where()}"
        return defer.fail(StorageUnavailable(f"storage unavailable: {reason}"))

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        # Cancelling a non-blocking command that waits for its reply is safe in
        # txredisapi: the replies of the connection stay in line.
        self._inflight += 1
        d.addTimeout(self.call_timeout, self.reactor)
        d.addBoth(self._finished)
        d.addErrback(self._translate)
        return d

    def _finished(self, result):
        self._inflight -= 1
        return result

    def _where(self) -> str:
        return f"Redis at {self.address.describe()}"

    def _translate(self, failure):
        if failure.check(*_UNAVAILABLE):
            raise StorageUnavailable(
                f"storage unavailable: {self._where()} did not answer in time"
                if failure.check(defer.TimeoutError, defer.CancelledError)
                else f"storage unavailable: connection to {self._where()} lost"
            )
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith(
            _TRANSIENT_REPLIES
        ):
            raise StorageUnavailable(f"storage unavailable: {failure.value}")
        return failure

    # -- readiness ----------------------------------------------------------

    async def wait_until_ready(self, poll_interval: float = 0.05, log_every: float = 5.0) -> None:
        """Return once the server answers and has its data loaded."""
        from twisted.internet import task

        waited = 0.0
        next_log = log_every
        while True:
            try:
                info = await self.execute("INFO", "persistence")
                if "loading:0" in info:
                    return
            except StorageUnavailable:
                pass
            await task.deferLater(self.reactor, poll_interval, lambda: None)
            waited += poll_interval
            if waited >= next_log:
                log.info(
                    "still waiting for Redis at {where} ({seconds:.0f} s)",
                    where=self.address.describe(),
                    seconds=waited,
                )
                next_log += log_every
