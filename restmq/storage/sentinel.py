"""Finding the Redis master through Sentinel, before every connection attempt.

With ``--redis-sentinel`` the broker names no Redis server: each connection of
the pool and of pub/sub asks the sentinels which server is the master of
``--redis-service`` each time it (re)connects, and the pool admits a
connection only once the server itself says it is the master (``ROLE``, see
restmq.storage.connection). Following a failover therefore needs nothing but
reconnecting: the connections to the old master break (or are dropped on a
``READONLY`` answer), and the next question to the sentinels names the new master.

txredisapi has a Sentinel client, but it waits up to ten seconds for an answer
naming a healthy master and queues its questions on sentinel connections with
no timeout; here each sentinel has ``timeout`` seconds to answer, the question
fails as soon as all have answered without a master that is up, and the master
named with the newest configuration epoch wins (docs/failover.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import hiredis
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from restmq.storage.connection import encode_command

log = Logger(namespace="restmq.storage")

DEFAULT_SENTINEL_PORT = 26379


class NoMaster(error.ConnectError):
    """No sentinel named a master of the service that is up (a failover is under way,
    or no sentinel could be reached)."""


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]`` (``[v6]:port``; the port defaults to 26379)."""
    sentinels = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        else:
            host, port_text = item, ""
        try:
            port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"{item!r} is not host:port (the port is not a number)") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"{item!r} is not host:port")
        sentinels.append((host, port))
    if not sentinels:
        raise ValueError("no sentinel given")
    return tuple(sentinels)


def _host_port(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Questions(protocol.Protocol):
    """Send some commands at once, read their replies (a list), hang up."""

    def __init__(self, *commands: Sequence[str]) -> None:
        self.commands = commands
        self.replies: list = []
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.answer: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"".join(encode_command(c) for c in self.commands))

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.replies.append(reply)
        if len(self.replies) >= len(self.commands) and not self.answer.called:
            self.answer.callback(self.replies)
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not self.answer.called:
            self.answer.errback(reason)


class _QuietFactory(protocol.ClientFactory):
    """Builds the one protocol given, without logging each connection."""

    noisy = False

    def __init__(self, question: _Questions) -> None:
        self.question = question

    def buildProtocol(self, addr) -> _Questions:
        return self.question


class MasterLocator:
    """Asks the sentinels where the master of ``service`` is; remembers the last answer."""

    def __init__(
        self, reactor, sentinels: Sequence[tuple[str, int]], service: str, timeout: float = 1.0
    ) -> None:
        self.reactor = reactor
        self.sentinels = tuple(sentinels)
        self.service = service
        self.timeout = timeout
        self.master: tuple[str, int] | None = None
        self._asking: defer.Deferred | None = None
        self._waiting: list[defer.Deferred] = []
        self._said_none = False
        self._on_move: list[Callable[[tuple[str, int]], object]] = []

    def on_move(self, listener: Callable[[tuple[str, int]], object]) -> None:
        """Call ``listener(new_master)`` each time the master is found somewhere else."""
        self._on_move.append(listener)

    def locate(self) -> defer.Deferred:
        """The master's ``(host, port)``; fails with NoMaster.

        Many connections reconnect at once after a failover: they share one round of
        questions. Each caller gets its own Deferred, so one caller cancelling (a pool
        slot being stopped) does not cancel the others.
        """
        mine: defer.Deferred = defer.Deferred()
        self._waiting.append(mine)
        if self._asking is None:
            self._asking = self._ask_all()
            self._asking.addBoth(self._answered)
        return mine

    def _answered(self, outcome) -> None:
        self._asking = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if d.called:  # cancelled
                continue
            if isinstance(outcome, tuple):
                d.callback(outcome)
            else:
                d.errback(outcome)

    def _ask_all(self) -> defer.Deferred:
        """Ask every sentinel at once and wait for all (each has ``timeout`` seconds).

        During a failover the sentinels disagree for a moment: the master named with
        the newest configuration epoch wins, a replica just promoted before the old
        master, so a sentinel that has not heard of the failover yet does not send us
        back to the old master. NoMaster when none names a master that is up.
        """
        answers = [self._ask(sentinel) for sentinel in self.sentinels]
        return defer.gatherResults(answers).addCallback(self._choose, self.sentinels)

    def _choose(self, answers: list, asked: Sequence[tuple[str, int]]) -> tuple[str, int]:
        usable = [(a[0], i) for i, a in enumerate(answers) if isinstance(a, tuple)]
        if not usable:
            why = "; ".join(f"{_host_port(s)}: {a}" for s, a in zip(asked, answers, strict=True))
            if not self._said_none:
                log.warn("Sentinel: no master of {service} now ({why})",
                         service=self.service, why=why)  # fmt: skip
                self._said_none = True
            raise NoMaster(string=f"no master of {self.service}: {why}")
        _, best = max(usable)
        master = answers[best][1]
        self._found(master, asked[best])
        return master

    def _ask(self, sentinel: tuple[str, int]) -> defer.Deferred:
        """One sentinel's view (see ``_usable_master``), or why it has none (a str).
        Never fails."""
        host, port = sentinel
        question = _Questions(
            ("SENTINEL", "MASTER", self.service),
            ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service),
        )
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        connected = endpoint.connect(_QuietFactory(question))
        timer = self.reactor.callLater(self.timeout, self._give_up, question, connected)

        def done(outcome):
            if timer.active():
                timer.cancel()
            return outcome

        def not_connected(reason):
            if not question.answer.called:
                question.answer.errback(reason)

        connected.addErrback(not_connected)
        d = question.answer.addBoth(done)
        return d.addCallbacks(self._usable_master, lambda f: f.getErrorMessage())

    @staticmethod
    def _give_up(question: _Questions, connected: defer.Deferred) -> None:
        if not question.answer.called:
            question.answer.errback(error.TimeoutError(string="no answer in time"))
        if not connected.called:
            connected.cancel()
        elif question.transport is not None:
            question.transport.abortConnection()

    @staticmethod
    def _usable_master(replies: list) -> tuple[tuple[int, int], tuple[str, int]] | str:
        """``((epoch, promoted), address)`` of the master one sentinel names, or why
        it names none.

        ``SENTINEL MASTER`` gives the master's state; ``GET-MASTER-ADDR-BY-NAME`` gives
        the replica being promoted as soon as a failover has promoted it, before the
        master's own entry changes (about a second later).
        """
        state_reply, address_reply = replies
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                return str(reply)
        try:
            state = dict(zip(state_reply[::2], state_reply[1::2], strict=False))
            epoch = int(state.get("config-epoch", 0))
            known = (state["ip"], int(state["port"]))
            address = (address_reply[0], int(address_reply[1]))
        except (KeyError, ValueError, TypeError, IndexError):
            return f"unexpected answer {replies!r:.80}"
        if address != known:
            return (epoch, 1), address  # a promoted replica
        flags = set(state.get("flags", "").split(","))
        if "master" not in flags or flags & {"s_down", "o_down"}:
            return f"its master is {state.get('flags', 'unknown')}"
        return (epoch, 0), address

    def _found(self, master: tuple[str, int], sentinel: tuple[str, int]) -> None:
        self._said_none = False
        if master != self.master:
            before = self.master
            self.master = master
            if before is None:
                log.info("Sentinel {sentinel}: the master of {service} is {master}",
                         sentinel=_host_port(sentinel), service=self.service,
                         master=_host_port(master))  # fmt: skip
            else:
                log.warn("Sentinel {sentinel}: the master of {service} moved from {before} "
                         "to {master}", sentinel=_host_port(sentinel), service=self.service,
                         before=_host_port(before), master=_host_port(master))  # fmt: skip
                for listener in self._on_move:
                    listener(master)


@implementer(IStreamClientEndpoint)
class MasterEndpoint:
    """Connects to whichever server the sentinels name as the master, at each attempt."""

    def __init__(self, reactor, locator: MasterLocator, timeout: float) -> None:
        self.reactor = reactor
        self.locator = locator
        self.timeout = timeout

    def connect(self, protocolFactory) -> defer.Deferred:
        def to(master: tuple[str, int]) -> defer.Deferred:
            host, port = master
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
            return endpoint.connect(protocolFactory)

        return self.locator.locate().addCallback(to)


@dataclass(frozen=True)
class SentinelAddress:
    """Redis as the master of a service that sentinels watch (in place of a RedisAddress)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    locator: MasterLocator | None = field(compare=False, repr=False, default=None)

    #: connections are admitted to the pool only if the server says it is the master
    master_only = True
    kind = "Sentinel"

    @classmethod
    def create(
        cls, reactor, sentinels: Sequence[tuple[str, int]], service: str, timeout: float = 1.0
    ) -> SentinelAddress:
        locator = MasterLocator(reactor, sentinels, service, timeout)
        return cls(tuple(sentinels), service, locator)

    def describe(self) -> str:
        master = self.locator.master if self.locator is not None else None
        now = _host_port(master) if master else "not known yet"
        via = ",".join(_host_port(s) for s in self.sentinels)
        return f"master {self.service} ({now}) via Sentinel {via}"

    def endpoint(self, reactor, timeout: float) -> MasterEndpoint:
        return MasterEndpoint(reactor, self.locator, timeout)


__all__ = ["MasterEndpoint", "MasterLocator", "NoMaster", "SentinelAddress", "parse_sentinels"]
