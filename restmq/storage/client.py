"""A txredisapi connection pool that fails fast instead of hanging.

txredisapi queues calls without limit while it is disconnected and retries its
connections with a backoff of up to ten seconds. A broker must instead answer
503 at once when Redis is away and resume by itself when it is back, so this
module wraps the pool: every call has a timeout, calls made while no connection
is up fail immediately, in-flight work is bounded, and reconnects are quick.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import failure

from restmq.errors import InvalidArgument, OutcomeUnknown, StorageUnavailable
from restmq.storage.address import ServerAddress
from restmq.storage.connection import (
    ObservedFactory,
    command_size,
    encode_command,
    monotonic_now,
)
from restmq.storage.failures import translate_failure
from restmq.storage.replication import ReplicaFence

log = Logger(namespace="restmq.storage")

# Commands that change nothing: when their answer is lost, nothing can have been stored.
_ASKING = encode_command(("ASKING",))
_READ_ONLY_COMMANDS = frozenset(
    {"GET", "MGET", "EXISTS", "LLEN", "LRANGE", "SMEMBERS", "SCARD", "SISMEMBER", "HGET",
     "HGETALL", "HLEN", "ZCARD", "ZRANGE", "ZSCORE", "TTL", "PTTL", "TYPE", "STRLEN", "INFO",
     "PING", "TIME", "DBSIZE", "SCAN"}
)  # fmt: skip


class LuaScript:
    """A Lua script, called by its SHA1 and loaded on the server on first use.

    ``writes``: whether running it changes stored data a client would count (a lost
    answer to such a script leaves the client not knowing what was stored).
    """

    def __init__(self, name: str, source: str, *, writes: bool = True) -> None:
        self.name = name
        self.source = source
        self.writes = writes
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Call:
    """One command on its way to Redis.

    A large command waiting at the gate holds its arguments, not their encoding: a
    message's bytes are then held once (by the request), and copied into a command
    only when it goes out, a few large commands at a time."""

    command: Sequence[Any]
    size: int  # in RESP bytes
    on_late: Callable[[Any], object] | None
    writes: bool
    fallback: Sequence[Any] | None
    name: str
    replicated: bool
    asking: bool = False  # sent right behind ASKING (a cluster slot being migrated)
    data: bytes | None = None  # a small command: encoded at once


class _LargeCommandGate:
    """Bounds the bytes of large commands that Redis has been sent but not answered.

    Forty 8 MiB adds sent at once keep Redis busy for longer than the call timeout,
    so every one of them would be answered "stored state unknown" although all are
    stored. Large commands therefore go out a few at a time, in arrival order; one
    that cannot go out within the call timeout is refused with nothing sent. Small
    commands never wait here.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting: deque[tuple[int, Callable[[], None]]] = deque()

    def try_take(self, size: int) -> bool:
        # One command always fits when nothing else is out, however large it is.
        if self.used and (self.waiting or self.used + size > self.limit):
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size
        while self.waiting:
            size, start = self.waiting[0]
            if self.used and self.used + size > self.limit:
                return
            self.waiting.popleft()
            self.used += size
            start()


class RedisClient:
    """Every Redis call the broker makes goes through here."""

    #: a command this large (in RESP bytes) passes the large-command gate
    large_command = 64 * 1024
    #: bytes of large commands Redis may have been sent and not yet answered
    large_in_flight = 32 * 1024 * 1024
    #: a large command's deadline grows by a second for this many of its bytes
    large_bytes_per_second = 4 * 1024 * 1024

    batch_per_connection = 32

    def __init__(
        self,
        reactor: IReactorTime,
        address: ServerAddress,
        *,
        poolsize: int = 10,
        dbid: int = 0,
        password: str | None = None,
        call_timeout: float = 1.5,
        max_inflight: int = 1000,
        wait_replicas: int = 0,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.call_timeout = call_timeout
        # writes asked to be replicated answer once this many replicas have them
        self.wait_replicas = wait_replicas
        self._fence = ReplicaFence(reactor, wait_replicas, call_timeout)
        self.poolsize = poolsize
        self.dbid = dbid
        self._password = password
        self._max_inflight = max_inflight
        self._inflight = 0
        self._factory: ObservedFactory | None = None
        self._ever_connected = False
        self._closing = False
        self.refusal: str | None = None  # why Redis refused our AUTH or SELECT, if it did
        self._idle_waiters: list[defer.Deferred] = []
        self._gate = _LargeCommandGate(self.large_in_flight)
        #: called after each reply with the command or script name and the seconds it took
        self.observe_call: Callable[[str, float], None] | None = None
        #: called with True when the pool's first connection comes up, False when its last goes
        self.on_connection_change: Callable[[bool], None] | None = None

    # -- life cycle ---------------------------------------------------------

    def connect(self) -> None:
        factory = ObservedFactory(
            self.address.describe(),
            self.dbid,
            self.poolsize,
            isLazy=True,
            charset="utf-8",
            password=self._password,
            convertNumbers=False,  # else a body such as "007" comes back as 7
        )
        factory.on_state_change = self._state_changed
        factory.on_refusal = self._refused
        factory.master_only = self.address.master_only
        factory.startConnecting(self.address.endpoint(self.reactor, timeout=2))
        self._factory = factory

    def disconnect(self) -> defer.Deferred:
        self._closing = True
        factory, self._factory = self._factory, None
        if factory is None:
            return defer.succeed(None)
        return factory.disconnect()

    def when_idle(self) -> defer.Deferred:
        """Fires once no call is waiting for Redis (at once when none is)."""
        if not self._inflight:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _now_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

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
        if self.on_connection_change is not None:
            self.on_connection_change(up)

    def _refused(self, why: str) -> None:
        if self.refusal is None:
            log.error(
                "Redis at {where} refused RestMQ: {why}; check --redis-password and "
                "--redis-db, then restart",
                where=self.address.describe(),
                why=why.removeprefix("Redis error: "),
            )
        self.refusal = why.removeprefix("Redis error: ")

    @property
    def connected(self) -> bool:
        return self._factory is not None and self._factory.size > 0

    @property
    def pool_size_now(self) -> int:
        """How many pool connections are up."""
        return self._factory.size if self._factory is not None else 0

    # -- calls --------------------------------------------------------------

    def execute(
        self, *command: Any, asking: bool = False, key: str | bytes | None = None
    ) -> defer.Deferred:
        """Run one Redis command; fail with StorageUnavailable rather than wait.

        ``key`` is what a ClusterClient routes the command by; one server serves every
        key, so it is not needed here (callers that may run on either pass it).
        ``asking``: send ASKING right before it on the same connection (a cluster node
        then serves a key of a slot it is importing).
        """
        writes = str(command[0]).upper() not in _READ_ONLY_COMMANDS
        return self._call(command, writes=writes, name=str(command[0]), asking=asking)

    def run_script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[Any] = (),
        on_late: Callable[[Any], object] | None = None,
        *,
        replicated: bool = False,
        asking: bool = False,
    ) -> defer.Deferred:
        """Run a Lua script by SHA1 in one round trip; load it only if the server lacks it.

        A script that answers after the caller was told StorageUnavailable has still
        run: ``on_late(reply)`` is then called, so that what it took is not lost. A
        writing script without ``on_late`` whose answer is lost fails with OutcomeUnknown.
        ``replicated``: answer only once ``wait_replicas`` replicas have what it wrote.
        ``asking``: as for ``execute``.
        """
        return self._call(
            ("EVALSHA", script.sha, len(keys), *keys, *args),
            on_late,
            writes=script.writes and on_late is None,  # on_late undoes what a late reply took
            fallback=("EVAL", script.source, len(keys), *keys, *args),
            name=script.name,
            replicated=replicated and bool(self.wait_replicas),
            asking=asking,
        )

    def _call(
        self,
        command: Sequence[Any],
        on_late: Callable[[Any], object] | None = None,
        *,
        writes: bool,
        fallback: Sequence[Any] | None = None,
        name: str = "",
        replicated: bool = False,
        asking: bool = False,
    ) -> defer.Deferred:
        """Send ``command`` now, or (a large one) once the gate lets it out.

        ``fallback`` is sent instead when Redis answers NOSCRIPT.
        """
        try:
            size = command_size(command)
            data = encode_command(command) if size < self.large_command else None
        except UnicodeEncodeError:
            return defer.fail(InvalidArgument("text that is not valid Unicode (a lone surrogate)"))
        call = _Call(command, size, on_late, writes, fallback, name, replicated, asking, data)
        if data is not None:
            return self._send_now(call, held=0)
        if self._connection() is None:
            return self._unavailable()
        if self._gate.try_take(call.size):
            return self._send_now(call, held=call.size)
        return self._send_later(call)

    def _send_now(self, call: _Call, held: int) -> defer.Deferred:
        connection = self._connection()
        if connection is None:
            if held:
                self._gate.give_back(held)
            return self._unavailable()

        def send(data: bytes) -> defer.Deferred:
            if call.asking:  # back to back on one connection: nothing comes between
                connection.send_encoded(_ASKING).addErrback(lambda _: None)
            reply = connection.send_encoded(data)
            return self._fence.after(connection, reply) if call.replicated else reply

        sent = send(call.data if call.data is not None else encode_command(call.command))
        if call.fallback is not None:

            def load_if_missing(failure):
                failure.trap(txredisapi.ResponseError)
                if not str(failure.value).startswith("NOSCRIPT"):
                    return failure
                return send(encode_command(call.fallback))

            sent.addErrback(load_if_missing)
        if held:
            # Redis has finished with it when it answers, however late that is.
            sent.addBoth(self._gate_released, held)
        # A large command takes time to cross the socket: its deadline grows with it;
        # a replicated one may wait for the write, then as long again for the replicas.
        extra = held / self.large_bytes_per_second
        if call.replicated:
            extra += self.call_timeout
        return self._track(sent, call.on_late, writes=call.writes, extra_time=extra, name=call.name)

    def _gate_released(self, outcome: Any, held: int) -> Any:
        self._gate.give_back(held)
        return outcome

    def _send_later(self, call: _Call) -> defer.Deferred:
        answer = defer.Deferred()

        def start() -> None:
            timer.cancel()
            self._send_now(call, held=call.size).chainDeferred(answer)

        def give_up() -> None:
            self._gate.waiting.remove(entry)
            answer.errback(
                StorageUnavailable(
                    f"broker busy: {self._gate.used} bytes of large writes are still with "
                    f"Redis and this one could not go out within {self.call_timeout:g} s; "
                    "nothing was sent to it, retry"
                )
            )

        entry = (call.size, start)
        timer = self.reactor.callLater(self.call_timeout, give_up)
        self._gate.waiting.append(entry)
        return answer

    def _connection(self):
        """A live pool connection; None when there is none or too much is in flight.

        This is the hot path of every request, so it skips txredisapi's handler
        (a closure and an inlineCallbacks generator per call): none of our calls
        needs a connection to itself (no MULTI, no blocking pops). Calls go to the
        first live connection until it has ``batch_per_connection`` replies
        outstanding: commands issued in one reactor turn then leave in one write
        (measured 5-10% more requests/s than spreading them). A connection that
        has waited ``STALL_AFTER`` seconds without any reply is passed over, so one
        slow call does not hold up the calls behind it.
        """
        factory = self._factory
        if factory is None or self._inflight >= self._max_inflight:
            return None
        now = monotonic_now()
        least, least_waiting = None, None
        for connection in factory.pool:
            if not connection.connected or connection.stalled(now):
                continue
            waiting = len(connection.replyQueue.waiting)
            if waiting < self.batch_per_connection:
                return connection
            if least_waiting is None or waiting < least_waiting:
                least, least_waiting = connection, waiting
        if least is None:  # every connection is stalled: wait behind one anyway
            least = next((c for c in factory.pool if c.connected), None)
        return least

    def _unavailable(self) -> defer.Deferred:
        if self._factory is not None and self._inflight >= self._max_inflight:
            reason = f"broker busy: {self._inflight} Redis calls already in flight"
        else:
            reason = f"no connection to {self._where()}"
        return defer.fail(
            StorageUnavailable(f"storage unavailable: {reason}; nothing was sent to it, retry")
        )

    def _track(
        self,
        sent: defer.Deferred,
        on_late: Callable[[Any], object] | None = None,
        *,
        writes: bool = False,
        extra_time: float = 0.0,
        name: str = "",
    ) -> defer.Deferred:
        """The answer to a sent command, or a failure after ``call_timeout``
        (plus ``extra_time``).

        The command is never cancelled: once written, Redis runs it, so a pop that
        answers late has taken messages. Its late reply goes to ``on_late``. When
        the answer of a ``writes`` command is lost (too late, or the connection
        dropped), the failure is OutcomeUnknown: it may have been stored.
        ``name`` (the command or script) is what ``observe_call`` is told.
        """
        self._inflight += 1
        answer = defer.Deferred()
        # The deadline is Redis's silence, not our own lateness: after a reactor turn
        # spent on big bodies, a reply may be waiting unread in the socket. So when the
        # deadline passes, the reactor reads what came first (one turn), then decides.
        timer = self.reactor.callLater(
            self.call_timeout + extra_time,
            self.reactor.callLater,
            0,
            self._too_late,
            answer,
            writes,
        )
        started = monotonic_now()

        def arrived(outcome):
            self._inflight -= 1
            observe = self.observe_call
            if observe is not None:
                observe(name, monotonic_now() - started)
            if timer.active():
                timer.cancel()
            if not answer.called:
                if isinstance(outcome, failure.Failure):
                    answer.errback(outcome)
                else:
                    answer.callback(outcome)
            elif isinstance(outcome, failure.Failure):
                log.info("a Redis reply that came too late failed: {error}",
                         error=outcome.getErrorMessage())  # fmt: skip
            elif on_late is not None:
                on_late(outcome)
            # Last: what the answer set off (a requeue, say) counts as in flight too.
            if not self._inflight and self._idle_waiters:
                self._now_idle()

        sent.addBoth(arrived)
        answer.addErrback(translate_failure, writes, self._where())
        return answer

    def _too_late(self, answer: defer.Deferred, writes: bool) -> None:
        if answer.called:
            return  # the reply was read in the turn it was given
        silence = f"{self._where()} did not answer in {self.call_timeout:g} s"
        if writes:
            answer.errback(
                OutcomeUnknown(
                    f"stored state unknown: {silence} to a write it had been sent; it may "
                    "still have happened: check before retrying"
                )
            )
        else:
            answer.errback(StorageUnavailable(f"storage unavailable: {silence}"))

    def _where(self) -> str:
        return f"Redis at {self.address.describe()}"

    # -- readiness ----------------------------------------------------------

    async def wait_until_ready(self, poll_interval: float = 0.05, log_every: float = 5.0) -> None:
        """Return once the server answers and has its data loaded."""
        from twisted.internet import task

        waited = 0.0
        next_log = log_every
        while True:
            if self.refusal is not None:
                raise StorageUnavailable(
                    f"Redis at {self.address.describe()} refused RestMQ: {self.refusal}"
                )
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
