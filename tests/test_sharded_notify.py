"""Sharded pub/sub on a Valkey Cluster: a broker hears what is SPUBLISHed on the channels
it subscribed, each on the primary that serves the channel's slot; it follows the slot
when a replica takes over or the slot moves, and then says notices may have been lost.

In process (pytest-twisted) against real clusters; messages are published, and
subscribers counted, by the tests' own connections to the nodes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.runtime.local_cluster import LocalCluster, Node, NodeError
from restmq.storage.cluster_client import ClusterClient, parse_seeds
from restmq.storage.sharded_notify import ShardedNotifications
from tests.support import free_port, redis_command, until


@dataclass
class Listener:
    """A broker's side: its cluster client, its notifications, what it heard."""

    client: ClusterClient
    notifications: ShardedNotifications
    heard: list[tuple[str, str]] = field(default_factory=list)
    reconnects: int = 0

    def subscribed(self, *channels: str) -> bool:
        return all(self.notifications.is_subscribed(channel) for channel in channels)


@pytest.fixture
def listen():
    """Start Listeners on a cluster, as a broker would; all are stopped after the test."""
    started: list[Listener] = []

    async def start(
        cluster: LocalCluster, password: str | None = None, subscriber_password: str | None = None
    ) -> Listener:
        seeds = parse_seeds(",".join(cluster.seeds))
        client = ClusterClient(reactor, seeds, poolsize=1, password=password)
        listener = Listener(client, None)  # type: ignore[arg-type]

        def reconnected() -> None:
            listener.reconnects += 1

        listener.notifications = ShardedNotifications(
            reactor,
            client,
            lambda channel, message: listener.heard.append((channel, message)),
            on_reconnect=reconnected,
            password=subscriber_password or password,
        )
        started.append(listener)
        client.connect()
        await client.wait_until_ready()
        listener.notifications.start()
        return listener

    yield start
    for listener in started:
        pytest_twisted.blockon(listener.notifications.stop())
        pytest_twisted.blockon(listener.client.disconnect())


def channel_of(tag: str) -> str:
    return f"{{{tag}}}restmq:notify:{tag}"


def owner_of(cluster: LocalCluster, channel: str) -> Node:
    """The live primary serving ``channel``'s slot: the one that does not redirect."""
    for node in cluster.nodes:
        if node.alive:
            try:
                node.command("EXISTS", channel)
            except NodeError:
                continue
            return node
    raise AssertionError(f"no live node serves {channel!r}")


def spread(cluster: LocalCluster, per_primary: int) -> dict[int, list[str]]:
    """New channels, ``per_primary`` on each primary (by port)."""
    run = uuid.uuid4().hex[:8]
    channels: dict[int, list[str]] = {node.port: [] for node in cluster.primaries}
    number = 0
    while any(len(found) < per_primary for found in channels.values()):
        channel = channel_of(f"q{number}-{run}")
        number += 1
        found = channels[owner_of(cluster, channel).port]
        if len(found) < per_primary:
            found.append(channel)
    return channels


def subscribers(node: Node, channel: str) -> int:
    return node.command("PUBSUB", "SHARDNUMSUB", channel)[1]


def sharded_connections(node: Node) -> list[int]:
    """How many channels each connection to ``node`` holds subscribed (sharded)."""
    counts = []
    for line in node.command("CLIENT", "LIST", "TYPE", "pubsub").splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if int(fields.get("ssub", "0")) > 0:
            counts.append(int(fields["ssub"]))
    return counts


def pause(seconds: float = 0.05) -> defer.Deferred:
    """The reactor runs meanwhile (a polling interval, not a wait for anything)."""
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_messages_on_every_primary_reach_the_broker_over_one_connection_each(
    valkey_cluster, listen
):
    listener = await listen(valkey_cluster)
    by_port = spread(valkey_cluster, per_primary=2)
    channels = [channel for found in by_port.values() for channel in found]
    for channel in channels:
        await listener.notifications.subscribe(channel)
    await until(lambda: listener.subscribed(*channels), what="every channel subscribed")

    for port, found in by_port.items():
        assert sharded_connections(valkey_cluster.node_at(port)) == [2]
        for channel in found:
            assert valkey_cluster.node_at(port).command("SPUBLISH", channel, f"to {channel}") == 1
    expected = sorted((channel, f"to {channel}") for channel in channels)
    await until(lambda: sorted(listener.heard) == expected, what="every message")
    assert listener.reconnects == 0


@pytest_twisted.ensureDeferred
async def test_each_broker_counts_once_and_a_channel_is_left_with_its_last_holder(
    valkey_cluster, listen
):
    first, second = await listen(valkey_cluster), await listen(valkey_cluster)
    (channel, neighbour), *_ = spread(valkey_cluster, per_primary=2).values()
    owner = owner_of(valkey_cluster, channel)
    assert not first.notifications.is_subscribed(channel)
    first.notifications.subscribe(channel)
    first.notifications.subscribe(channel)  # a second holder, say a long-poll waiter
    second.notifications.subscribe(channel)
    await until(lambda: first.subscribed(channel) and second.subscribed(channel))
    # the connection to that primary is up now: subscribe() fires on the confirmation
    await first.notifications.subscribe(neighbour)
    assert first.notifications.is_subscribed(neighbour)

    assert owner.command("SPUBLISH", channel, "both") == 2
    first.notifications.unsubscribe(channel)
    assert first.notifications.is_subscribed(channel)  # still held once
    assert owner.command("SPUBLISH", channel, "still both") == 2
    first.notifications.unsubscribe(channel)
    assert not first.notifications.is_subscribed(channel)
    await until(lambda: subscribers(owner, channel) == 1, what="the first broker to leave")
    assert owner.command("SPUBLISH", channel, "second only") == 1
    assert owner.command("SPUBLISH", neighbour, "neighbour") == 1
    await until(lambda: (channel, "second only") in second.heard)
    await until(lambda: (neighbour, "neighbour") in first.heard)
    assert [message for _, message in first.heard] == ["both", "still both", "neighbour"]
    assert [message for _, message in second.heard] == ["both", "still both", "second only"]

    second.notifications.unsubscribe(channel)
    await until(lambda: subscribers(owner, channel) == 0, what="the second broker to leave")
    assert owner.command("SPUBLISH", channel, "nobody") == 0


@pytest_twisted.ensureDeferred
async def test_a_dropped_subscriber_connection_subscribes_again_then_calls_on_reconnect(
    valkey_cluster, listen
):
    listener = await listen(valkey_cluster)
    by_port = spread(valkey_cluster, per_primary=1)
    channels = [found[0] for found in by_port.values()]
    for channel in channels:
        listener.notifications.subscribe(channel)
    await until(lambda: listener.subscribed(*channels))
    victim = valkey_cluster.node_at(next(iter(by_port)))
    assert victim.command("CLIENT", "KILL", "TYPE", "pubsub") == 1

    await until(lambda: listener.reconnects == 1, what="on_reconnect")
    assert listener.subscribed(*channels)
    assert sharded_connections(victim) == [1]
    for port, (channel,) in by_port.items():
        assert valkey_cluster.node_at(port).command("SPUBLISH", channel, "again") == 1
    await until(lambda: len(listener.heard) == len(channels), what="every message")

    listener.notifications.reconnect()  # told to: every connection, once more
    await until(lambda: listener.reconnects == 2, what="on_reconnect after reconnect()")
    assert listener.subscribed(*channels)


@pytest_twisted.ensureDeferred
async def test_stop_closes_every_subscriber_connection(valkey_cluster, listen):
    listener = await listen(valkey_cluster)
    by_port = spread(valkey_cluster, per_primary=1)
    for (channel,) in by_port.values():
        listener.notifications.subscribe(channel)
    await until(lambda: listener.subscribed(*(found[0] for found in by_port.values())))

    await listener.notifications.stop()
    assert not any(listener.subscribed(channel) for (channel,) in by_port.values())
    for port, (channel,) in by_port.items():
        node = valkey_cluster.node_at(port)
        await until(lambda node=node, channel=channel: subscribers(node, channel) == 0)
        assert node.command("SPUBLISH", channel, "gone") == 0


@pytest_twisted.ensureDeferred
async def test_with_no_node_reachable_subscribe_fires_at_once_and_the_channel_is_remembered():
    client = ClusterClient(reactor, [("127.0.0.1", free_port())])
    client.connect()
    notifications = ShardedNotifications(reactor, client, lambda channel, message: None)
    notifications.start()
    try:
        started = time.monotonic()
        await notifications.subscribe(channel_of("nowhere"))
        assert time.monotonic() - started < 0.5
        assert not notifications.is_subscribed(channel_of("nowhere"))
    finally:
        await notifications.stop()
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_after_a_failover_the_channel_is_heard_from_the_promoted_replica(
    cluster_factory, listen
):
    cluster = cluster_factory(primaries=3, replicas=1)
    listener = await listen(cluster)
    by_port = spread(cluster, per_primary=2)
    victim = cluster.node_at(next(iter(by_port)))
    (channel, later), *others = by_port.values()
    elsewhere = [found[0] for found in others]
    replica = next(node for node in cluster.replicas if node.shard == victim.shard)
    for name in (channel, *elsewhere):
        listener.notifications.subscribe(name)
    await until(lambda: listener.subscribed(channel, *elsewhere))

    cluster.kill(victim)
    await until(lambda: not listener.subscribed(channel), 5, what="the primary seen gone")
    started = time.monotonic()
    await listener.notifications.subscribe(later)  # its primary is down: remembered
    assert time.monotonic() - started < 0.5
    sent = 0
    while replica.live_role() != "primary":
        for name in elsewhere:  # the other shards keep working
            assert owner_of(cluster, name).command("SPUBLISH", name, f"during {sent}") == 1
        sent += 1
        await pause()
    await until(lambda: listener.subscribed(channel, later), 10, what="subscribed on the replica")
    await until(lambda: listener.reconnects == 1, what="on_reconnect")

    assert replica.command("SPUBLISH", channel, "after") == 1
    assert replica.command("SPUBLISH", later, "later") == 1
    for name in elsewhere:
        assert owner_of(cluster, name).command("SPUBLISH", name, "after") == 1
    await until(lambda: {(channel, "after"), (later, "later")} <= set(listener.heard))
    for name in elsewhere:
        await until(lambda name=name: (name, "after") in listener.heard)
        heard = [message for heard_on, message in listener.heard if heard_on == name]
        assert heard[:sent] == [f"during {number}" for number in range(sent)]
    assert listener.reconnects == 1


@pytest_twisted.ensureDeferred
async def test_a_slot_moved_to_another_primary_is_subscribed_there(cluster_factory, listen):
    cluster = cluster_factory(primaries=3, replicas=0)
    listener = await listen(cluster)
    by_port = spread(cluster, per_primary=1)
    channels = [found[0] for found in by_port.values()]
    for channel in channels:
        listener.notifications.subscribe(channel)
    await until(lambda: listener.subscribed(*channels))
    moving = channels[0]
    source = owner_of(cluster, moving)
    target = cluster.node_at(list(by_port)[1])
    slot = source.command("CLUSTER", "KEYSLOT", moving)
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    for node in [target, source, cluster.node_at(list(by_port)[2])]:
        node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

    # the source left the channel unasked; it is subscribed on the target
    await until(lambda: listener.reconnects == 1, what="on_reconnect")
    assert listener.subscribed(*channels)
    assert target.command("SPUBLISH", moving, "moved") == 1
    assert sharded_connections(target) == [2]
    await until(lambda: (moving, "moved") in listener.heard)
    await until(lambda: sharded_connections(source) == [], what="the source let go")


@pytest_twisted.ensureDeferred
async def test_the_password_is_given_to_every_primary(cluster_factory, listen, log_lines):
    cluster = cluster_factory(primaries=3, replicas=0)
    by_port = spread(cluster, per_primary=1)  # asks the nodes: before they want a password
    for node in cluster.nodes:
        node.command("CONFIG", "SET", "requirepass", "sesame")
    listener = await listen(cluster, password="sesame")
    channels = [found[0] for found in by_port.values()]
    for channel in channels:
        listener.notifications.subscribe(channel)
    await until(lambda: listener.subscribed(*channels))
    for port, (channel,) in by_port.items():
        published = redis_command(("127.0.0.1", port), "SPUBLISH", channel, "hi", password="sesame")
        assert published == 1
    await until(lambda: len(listener.heard) == len(channels), what="every message")

    refused = await listen(cluster, password="sesame", subscriber_password="wrong")
    await refused.notifications.subscribe(channels[0])  # refused: fires all the same
    await until(
        lambda: any("sharded pub/sub" in line and "WRONGPASS" in line for line in log_lines)
    )
    assert not refused.notifications.is_subscribed(channels[0])
