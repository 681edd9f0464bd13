"""Sharded pub/sub on a Valkey Cluster: how brokers sharing a cluster wake each other.

A notice is published with ``SPUBLISH`` on the primary that serves its channel's slot,
and reaches only the clients subscribed (``SSUBSCRIBE``) there. ``ShardedNotifications``
offers what ``Notifications`` (storage.notify) offers, over a ``ClusterClient``: one
subscriber connection to each primary that serves a subscribed channel, each channel
subscribed on its own primary (never on a replica: SPUBLISH counts the receivers on the
primary, and broadcasts rely on that count).

When the slot map changes (a failover, a slot moved) or a subscriber connection drops,
each channel is subscribed again where its slot now lives, and then ``on_reconnect()``
tells the owner that notices may have been lost. A channel whose primary is
unreachable is remembered and subscribed once the map names a reachable one.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python import failure

from restmq.storage.cluster_client import REREAD_INTERVAL, Address, ClusterClient
from restmq.storage.cluster_slots import key_slot, parse_redirection

log = Logger(namespace="restmq.storage")

#: how long subscribe() waits for a node's confirmation before it fires anyway
CONFIRM_TIMEOUT = 2.0
#: before trying again a channel a node refused for another reason than MOVED
REFUSED_RETRY = 1.0

_SHARDED_REPLIES = frozenset({"smessage", "ssubscribe", "sunsubscribe"})


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _ShardSubscriberProtocol(txredisapi.SubscriberProtocol):
    """A subscriber connection that understands sharded pub/sub.

    txredisapi's SubscriberProtocol knows the replies of SUBSCRIBE and PSUBSCRIBE only.
    Sharded pub/sub answers in the same RESP2 arrays: ``["ssubscribe", channel, count]``
    per channel subscribed, ``["sunsubscribe", channel, count]`` per channel left, and
    ``["smessage", channel, message]`` per message. The base class would queue all of
    them as the answer to whichever command waits next (a message would be lost, the
    next answer wrong). Worse, a node that stops serving a slot (migrated away, or no
    longer a primary) sends ``sunsubscribe`` for its channels unasked. So
    ``replyReceived`` takes these arrays first: messages go to the link, a
    (s)unsubscribe answers the command it matches (commands are answered in order,
    and ``ask`` records each one), and one that matches none is the node dropping the
    channel. Commands are sent one channel each, so each has exactly one answer.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: (kind, channel) of each command sent and not yet answered, oldest first
        self._asked: deque[tuple[str, str]] = deque()

    def connectionMade(self):
        ready = super().connectionMade()
        self.whenConnected().addCallback(self.factory.connection_up)
        return ready

    def connectionLost(self, why):
        super().connectionLost(why)
        self.factory.connection_down(self)

    def ask(self, kind: str, channel: str) -> defer.Deferred:
        """Send SSUBSCRIBE or SUNSUBSCRIBE (``kind`` in lower case) for one channel."""
        self._asked.append((kind, channel))
        try:
            return self.execute_command(kind.upper(), channel, apply_timeout=False)
        except Exception:
            self._asked.pop()
            raise

    def replyReceived(self, reply):
        if isinstance(reply, list) and len(reply) == 3 and _text(reply[0]) in _SHARDED_REPLIES:
            kind, channel = _text(reply[0]), _text(reply[1])
            if kind == "smessage":
                self.factory.owner.on_message(channel, _text(reply[2]))
            elif self._asked and self._asked[0] == (kind, channel):
                self._asked.popleft()
                self.replyQueue.put(reply)
            elif kind == "sunsubscribe":
                self.factory.owner._dropped(self.factory, channel)
            return
        if self._asked:  # an error, or the connection lost: the oldest command's answer
            self._asked.popleft()
        super().replyReceived(reply)


class _Link(txredisapi.RedisFactory):
    """The subscriber connection to one primary, and its channels."""

    protocol = _ShardSubscriberProtocol
    initialDelay = 0.1
    maxDelay = 1.0

    def __init__(self, owner: ShardedNotifications, address: Address, password: str | None):
        host, port = address
        super().__init__(
            f"{host}:{port}", None, 1, isLazy=True, password=password, charset="utf-8",
            convertNumbers=False,
        )  # fmt: skip
        self.owner = owner
        self.address = address
        self.connection: _ShardSubscriberProtocol | None = None
        #: the channels whose slot this primary serves, as the map last said
        self.wanted: set[str] = set()
        #: the channels the node confirmed on this connection
        self.confirmed: set[str] = set()
        #: SSUBSCRIBE sent, answer due: fires once handled (never fails)
        self.asking: dict[str, defer.Deferred] = {}
        #: an attempt to connect failed since the connection was last up
        self.unreachable = False
        self._retry_after_drop = False
        self.deferred.addErrback(self._refused)

    def describe(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def open(self, reactor) -> None:
        self.startConnecting(HostnameEndpoint(reactor, *self.address, timeout=2))

    def connection_up(self, connection: _ShardSubscriberProtocol) -> None:
        self.unreachable = False
        self.owner._link_up(self, connection)

    def connection_down(self, connection: _ShardSubscriberProtocol) -> None:
        self._retry_after_drop = True
        self.owner._link_down(self, connection)

    def retryDelay(self, attempt: int) -> float:
        # Asked before each new attempt: the first after a drop is just a reconnect,
        # any other follows a failed attempt. A node that refuses connections is
        # not waited for before on_reconnect (it may be gone for good).
        if self._retry_after_drop:
            self._retry_after_drop = False
        elif not self.unreachable:
            self.unreachable = True
            self.owner.reactor.callLater(0, self.owner._maybe_recovered)
        return super().retryDelay(attempt)

    def _refused(self, reason: failure.Failure) -> None:
        log.warn("sharded pub/sub: {node} refused the connection: {error}",
                 node=self.describe(), error=reason.getErrorMessage())  # fmt: skip


class ShardedNotifications:
    """Subscribe to channels on a Valkey Cluster; ``on_message(channel, message)``
    hears what is SPUBLISHed on them. The interface of ``Notifications``."""

    def __init__(
        self,
        reactor,
        cluster: ClusterClient,
        on_message: Callable[[str, str], None],
        *,
        password: str | None = None,
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        self._password = password
        # channel -> how many holders (consumers, waiters) asked for it
        self._channels: Counter[str] = Counter()
        self._slots: dict[str, int] = {}  # each held channel's slot
        self._links: dict[Address, _Link] = {}  # by primary; only those serving a channel
        self._closing: set[defer.Deferred] = set()  # links let go, still closing
        #: channels that were subscribed and lost it (notices may be lost meanwhile)
        self._recovering: set[str] = set()
        self._running = False
        self._stop_reading = None
        self._retry = None

    # -- the interface of Notifications ------------------------------------

    def start(self) -> None:
        self._running = True
        self._stop_reading = self.cluster.on_map_read(lambda _: self._settle())
        if self.cluster.slot_map is None:
            self.cluster.read_map().addErrback(lambda _: None)  # settles once read
        self._settle()

    def stop(self) -> defer.Deferred:
        """Close every subscriber connection; fires once they are closed."""
        self._running = False
        if self._stop_reading is not None:
            self._stop_reading()
            self._stop_reading = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        links, self._links = list(self._links.values()), {}
        self._recovering.clear()
        closed = [link.disconnect() for link in links] + list(self._closing)
        return defer.gatherResults(closed, consumeErrors=True).addCallback(lambda _: None)

    def is_subscribed(self, channel: str) -> bool:
        """Whether messages SPUBLISHed on ``channel`` now reach this broker: its
        current primary confirmed the subscription."""
        if channel not in self._channels:
            return False
        link = self._links.get(self._owner(channel))
        return link is not None and link.connection is not None and channel in link.confirmed

    def subscribe(self, channel: str) -> defer.Deferred:
        """Listen on ``channel``; fires once its primary confirmed (or at once while
        that primary is unreachable or unknown: it is subscribed when it is back).

        Each subscribe needs its own unsubscribe: the channel stays subscribed while
        anyone still holds it.
        """
        self._channels[channel] += 1
        if channel not in self._slots:
            self._slots[channel] = key_slot(channel)
        address = self._owner(channel)
        if not self._running or address is None:
            return defer.succeed(None)  # subscribed when started, or when the map says where
        link = self._links.get(address) or self._open(address)
        link.wanted.add(channel)
        if link.connection is None:
            return defer.succeed(None)  # subscribed once connected
        if channel not in link.confirmed and channel not in link.asking:
            self._ask_subscribe(link, channel)
        return self._answer(link.asking[channel]) if channel in link.asking else defer.succeed(None)

    def unsubscribe(self, channel: str) -> None:
        if self._channels[channel] > 1:
            self._channels[channel] -= 1
            return
        self._channels.pop(channel, None)
        self._slots.pop(channel, None)
        self._recovering.discard(channel)
        for address, link in list(self._links.items()):
            if channel in link.wanted:
                link.wanted.discard(channel)
                if not link.wanted:
                    self._close(address)  # closing the connection leaves every channel
                    continue
            if channel in link.confirmed:
                link.confirmed.discard(channel)
                self._ask(link, "sunsubscribe", channel)
            # one whose SSUBSCRIBE is on its way is left once confirmed (_subscribed)

    def reconnect(self) -> None:
        """Leave every primary now and connect again (the map is read again too)."""
        for link in self._links.values():
            if link.connection is not None:
                link.connection.transport.loseConnection()

    # -- where each channel goes --------------------------------------------

    def _owner(self, channel: str) -> Address | None:
        """The primary serving ``channel``'s slot, as the map last read says."""
        slots = self.cluster.slot_map
        slot = self._slots.get(channel)
        if slots is None or slot is None:
            return None
        node = slots.primary_of(slot)
        return node.address if node is not None else None

    def _settle(self) -> None:
        """Subscribe every channel on the primary that serves it now, leave it elsewhere."""
        if not self._running:
            return
        wanted: dict[Address, set[str]] = {}
        for channel in self._channels:
            address = self._owner(channel)
            if address is not None:
                wanted.setdefault(address, set()).add(channel)
        for address in list(self._links):
            if address not in wanted:
                self._close(address)
        for address, channels in wanted.items():
            link = self._links.get(address) or self._open(address)
            link.wanted = channels
            for channel in sorted(link.confirmed - channels):  # moved, or not held
                link.confirmed.discard(channel)
                self._lost(channel)
                self._ask(link, "sunsubscribe", channel)
            if link.connection is not None:
                for channel in sorted(channels - link.confirmed - link.asking.keys()):
                    self._ask_subscribe(link, channel)
        self._maybe_recovered()

    def _lost(self, channel: str) -> None:
        if channel in self._channels:
            self._recovering.add(channel)

    def _maybe_recovered(self) -> None:
        """Call on_reconnect once every channel lost is subscribed again, or waits for
        a primary that refuses connections (it gets a call of its own once back)."""
        if not self._recovering or any(link.asking for link in self._links.values()):
            return
        for channel in self._channels:
            link = self._links.get(self._owner(channel))
            if link is not None and not link.unreachable and channel not in link.confirmed:
                return  # connecting, or not subscribed yet (refused: retried soon)
        back = {channel for channel in self._recovering if self.is_subscribed(channel)}
        if back:
            self._recovering -= back
            log.info("sharded pub/sub: {n} channel(s) subscribed again", n=len(back))
            # notices published while they were not subscribed are gone: catch up
            self.on_reconnect()

    # -- the links to the primaries -----------------------------------------

    def _open(self, address: Address) -> _Link:
        link = self._links[address] = _Link(self, address, self._password)
        link.open(self.reactor)
        return link

    def _close(self, address: Address) -> None:
        link = self._links.pop(address)
        for channel in link.confirmed:
            self._lost(channel)
        link.confirmed.clear()
        closed = link.disconnect()
        self._closing.add(closed)
        closed.addBoth(lambda result: self._closing.discard(closed) or result)

    def _current(self, link: _Link) -> bool:
        return self._running and self._links.get(link.address) is link

    def _link_up(self, link: _Link, connection: _ShardSubscriberProtocol) -> None:
        if not self._current(link):
            return
        link.connection = connection
        self._settle()

    def _link_down(self, link: _Link, connection: _ShardSubscriberProtocol) -> None:
        if link.connection is not connection:
            return
        link.connection = None
        for channel in link.confirmed:
            self._lost(channel)
        link.confirmed.clear()
        if self._current(link):
            self._retry_soon(REREAD_INTERVAL)  # it may have failed over: read the map

    def _dropped(self, link: _Link, channel: str) -> None:
        """The node left ``channel`` unasked: it no longer serves its slot."""
        if channel in link.confirmed:
            link.confirmed.discard(channel)
            self._lost(channel)
            self._retry_soon(0)

    def _ask(self, link: _Link, kind: str, channel: str) -> defer.Deferred | None:
        if link.connection is None:
            return None
        try:
            answer = link.connection.ask(kind, channel)
        except txredisapi.ConnectionError:
            return None  # just lost: _link_down follows
        if kind == "sunsubscribe":
            answer.addErrback(self._refused, link, kind, channel)
        return answer

    def _ask_subscribe(self, link: _Link, channel: str) -> None:
        answer = self._ask(link, "ssubscribe", channel)
        if answer is None:
            return
        link.asking[channel] = answer
        answer.addCallbacks(
            self._subscribed,
            self._refused,
            (link, channel),
            errbackArgs=(link, "ssubscribe", channel),
        )
        answer.addBoth(self._answered, link, channel)

    def _answered(self, _, link: _Link, channel: str) -> None:
        link.asking.pop(channel, None)
        self._maybe_recovered()

    def _subscribed(self, reply, link: _Link, channel: str) -> None:
        if channel in link.wanted and self._current(link):
            link.confirmed.add(channel)
        else:  # let go, or moved, while its SSUBSCRIBE was on its way
            self._ask(link, "sunsubscribe", channel)

    def _refused(self, reason: failure.Failure, link: _Link, kind: str, channel: str) -> None:
        if reason.check(txredisapi.ConnectionError):
            return  # the link is down: subscribed again once it is back
        text = reason.getErrorMessage()
        if parse_redirection(text) is not None:
            log.info("sharded pub/sub: {node} no longer serves {channel} ({error}); "
                     "reading the slot map again",
                     node=link.describe(), channel=channel, error=text)  # fmt: skip
            self._retry_soon(REREAD_INTERVAL)
            return
        log.warn("sharded pub/sub {command} {channel} failed on {node}: {error}",
                 command=kind.upper(), channel=channel, node=link.describe(),
                 error=text)  # fmt: skip
        if kind == "ssubscribe":
            self._retry_soon(REFUSED_RETRY)

    def _retry_soon(self, delay: float) -> None:
        """Read the map again after ``delay``, then subscribe what is missing."""
        if not self._running or (self._retry is not None and self._retry.active()):
            return
        self._retry = self.reactor.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.cluster.read_map().addErrback(lambda _: None).addCallback(lambda _: self._settle())

    def _answer(self, answer: defer.Deferred) -> defer.Deferred:
        """Fires once ``answer`` was handled, or after CONFIRM_TIMEOUT (a node that
        hangs must not hold the caller)."""
        waiter = defer.Deferred()

        def fire(result=None):
            if not waiter.called:
                waiter.callback(None)
            if timer.active():
                timer.cancel()
            return result

        timer = self.reactor.callLater(CONFIRM_TIMEOUT, fire)
        answer.addBoth(fire)
        return waiter
