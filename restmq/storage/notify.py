"""Redis pub/sub: how brokers sharing one Redis tell each other about their queues.

One subscriber connection per broker. Channels are subscribed while this broker
has streaming consumers or long-poll waiters of their queue, and subscribed again
after a reconnect (txredisapi does not do that by itself).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger

from restmq.storage.address import ServerAddress

log = Logger(namespace="restmq.storage")


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    def connectionMade(self):
        ready = super().connectionMade()
        self.whenConnected().addCallback(self.factory.notifications._connected)
        return ready

    def connectionLost(self, why):
        super().connectionLost(why)
        self.factory.notifications._disconnected(self)

    def messageReceived(self, pattern, channel, message):
        self.factory.notifications._received(channel, message)


class _SubscriberFactory(txredisapi.RedisFactory):
    protocol = _SubscriberProtocol
    initialDelay = 0.1
    maxDelay = 1.0

    def __init__(self, notifications: Notifications, uuid: str, password: str | None) -> None:
        super().__init__(
            uuid, None, 1, isLazy=True, password=password, charset="utf-8", convertNumbers=False
        )
        self.notifications = notifications


class Notifications:
    """Subscribe to channels; ``on_message(channel, message)`` hears what is published."""

    def __init__(
        self,
        reactor,
        address: ServerAddress,
        on_message: Callable[[str, str], None],
        *,
        password: str | None = None,
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        self._password = password
        # channel -> how many holders (consumers, waiters) asked for it
        self._channels: Counter[str] = Counter()
        # channels the server confirmed on the current connection: only those are heard
        self._confirmed: set[str] = set()
        self._connection: _SubscriberProtocol | None = None
        self._factory: _SubscriberFactory | None = None
        self._ever_connected = False

    def start(self) -> None:
        self._factory = _SubscriberFactory(self, self.address.describe(), self._password)
        self._factory.startConnecting(self.address.endpoint(self.reactor, timeout=2))

    def stop(self) -> defer.Deferred:
        factory, self._factory = self._factory, None
        self._connection = None
        self._confirmed.clear()
        return factory.disconnect() if factory is not None else defer.succeed(None)

    def is_subscribed(self, channel: str) -> bool:
        """Whether messages published on ``channel`` now reach this broker."""
        return self._connection is not None and channel in self._confirmed

    def subscribe(self, channel: str) -> defer.Deferred:
        """Listen on ``channel``; fires once the server confirmed (or at once when offline).

        Each subscribe needs its own unsubscribe: the channel stays subscribed while
        anyone still holds it.
        """
        self._channels[channel] += 1
        if self._connection is None:
            return defer.succeed(None)  # subscribed on (re)connect
        return self._send_subscribe(self._connection, [channel])

    def unsubscribe(self, channel: str) -> None:
        if self._channels[channel] > 1:
            self._channels[channel] -= 1
            return
        del self._channels[channel]
        self._confirmed.discard(channel)
        if self._connection is not None:
            self._connection.unsubscribe(channel).addErrback(self._failed, "UNSUBSCRIBE")

    def _failed(self, failure, command: str) -> None:
        log.warn("pub/sub {command} failed: {error}", command=command,
                 error=failure.getErrorMessage())  # fmt: skip

    def reconnect(self) -> None:
        """Leave the server now and connect again (the master moved elsewhere)."""
        if self._connection is not None:
            self._connection.transport.loseConnection()

    def _connected(self, connection: _SubscriberProtocol) -> None:
        if self.address.master_only:
            # Subscribed on a replica we would still hear every notice, but PUBLISH on
            # the master would not count us, and broadcast batches rely on that count.
            role = connection.execute_command("ROLE").addTimeout(2, self.reactor)
            role.addBoth(self._subscribe_if_master, connection)
            return
        self._subscribe(connection)

    def _subscribe_if_master(self, role, connection: _SubscriberProtocol) -> None:
        if isinstance(role, list) and role and role[0] == "master":
            self._subscribe(connection)
        elif connection.transport is not None:
            connection.transport.loseConnection()

    def _subscribe(self, connection: _SubscriberProtocol) -> None:
        self._connection = connection
        self._confirmed.clear()
        if self._channels:
            self._send_subscribe(connection, sorted(self._channels))
        if self._ever_connected:
            log.info("pub/sub reconnected; {n} channel(s) subscribed again", n=len(self._channels))
            # Notices published while we were away are gone: let the owner catch up.
            self.on_reconnect()
        self._ever_connected = True

    def _send_subscribe(
        self, connection: _SubscriberProtocol, channels: list[str]
    ) -> defer.Deferred:
        # A channel counts as heard once the server confirmed it: a notice published
        # between the SUBSCRIBE and its confirmation would not reach us.
        def confirmed(result):
            if connection is self._connection:
                self._confirmed.update(c for c in channels if c in self._channels)
            return result

        subscribed = connection.subscribe(channels)  # one confirmation: all of them are in
        return subscribed.addCallback(confirmed).addErrback(self._failed, "SUBSCRIBE")

    def _disconnected(self, connection: _SubscriberProtocol) -> None:
        if connection is self._connection:
            self._connection = None
            self._confirmed.clear()

    def _received(self, channel, message) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        self.on_message(channel, message)
