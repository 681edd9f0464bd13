"""Finding the master through real sentinels, and a pool that only ever talks to a master.

In process (pytest-twisted), against real valkey-server processes: sentinels watching a
master and its replica, and standalone servers turned into replicas under the client.
"""

from __future__ import annotations

import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from restmq.errors import StorageUnavailable
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from restmq.storage.notify import Notifications
from restmq.storage.sentinel import MasterLocator, NoMaster, SentinelAddress
from tests.support import SentinelGroup, ValkeyNode, free_port, wait_for


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    started = SentinelGroup(tmp_path_factory.mktemp("watched"), replicas=1)
    try:
        yield started.start()
    finally:
        started.stop()


def sentinels_of(group: SentinelGroup) -> list[tuple[str, int]]:
    return [("127.0.0.1", watcher.port) for watcher in group.watchers]


def subscriber_ids(server) -> set[str]:
    """The ids of the server's clients subscribed to a channel."""
    ids = set()
    for line in server.command("CLIENT", "LIST", "TYPE", "pubsub").splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if int(fields.get("sub", "0")) > 0:
            ids.add(fields["id"])
    return ids


def wait_until(predicate, timeout: float = 10.0) -> defer.Deferred:
    """Poll ``predicate`` without blocking the reactor."""

    async def poll():
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await pause(0.02)

    return defer.ensureDeferred(poll())


def pause(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_the_master_is_found_past_a_sentinel_that_is_down(group):
    nobody = ("127.0.0.1", free_port())
    locator = MasterLocator(reactor, [nobody, *sentinels_of(group)], group.service)
    started = time.monotonic()
    assert await locator.locate() == ("127.0.0.1", group.master_port())
    assert time.monotonic() - started < 0.5
    assert locator.master == ("127.0.0.1", group.master_port())


@pytest_twisted.ensureDeferred
async def test_no_sentinel_reachable_fails_at_once_not_after_ten_seconds():
    locator = MasterLocator(reactor, [("127.0.0.1", free_port())], "anything", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NoMaster):
        await locator.locate()
    assert time.monotonic() - started < 1.5


@pytest_twisted.ensureDeferred
async def test_a_sentinel_that_never_answers_costs_at_most_the_timeout(group):
    with socket.socket() as silent:  # accepts connections (the backlog does), says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = silent.getsockname()
        locator = MasterLocator(reactor, [mute, *sentinels_of(group)], group.service, 0.5)
        started = time.monotonic()
        assert await locator.locate() == ("127.0.0.1", group.master_port())
        assert time.monotonic() - started < 1.0
        alone = MasterLocator(reactor, [mute], group.service, 0.5)
        with pytest.raises(NoMaster) as caught:
            await alone.locate()
        assert "no answer in time" in str(caught.value)
        assert time.monotonic() - started < 2.0


@pytest_twisted.ensureDeferred
async def test_an_unknown_service_is_no_master_and_says_why(group):
    locator = MasterLocator(reactor, sentinels_of(group), "no-such-service")
    with pytest.raises(NoMaster) as caught:
        await locator.locate()
    assert "No such master with that name" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_many_connections_reconnecting_share_one_round_of_questions(group):
    locator = MasterLocator(reactor, sentinels_of(group), group.service)
    watcher, master = group.watchers[0], ("127.0.0.1", group.master_port())
    before = connections_received(watcher)
    first, second = locator.locate(), locator.locate()
    assert await first == await second == master
    # one question to each sentinel (the INFO asking this is the other connection)
    assert connections_received(watcher) - before == 2


def connections_received(server: ValkeyNode) -> int:
    info = server.command("INFO", "stats")
    return int(info.split("total_connections_received:")[1].split()[0])


@pytest_twisted.ensureDeferred
async def test_a_pool_through_sentinel_writes_to_the_master(group):
    address = SentinelAddress.create(reactor, sentinels_of(group), group.service)
    client = RedisClient(reactor, address, poolsize=2)
    client.connect()
    try:
        await client.wait_until_ready()
        assert await client.execute("SET", "through-sentinel", "yes") == "OK"
        master = group.node(group.master_port())
        assert master.command("GET", "through-sentinel") == "yes"
        assert f"127.0.0.1:{master.port}" in address.describe()
    finally:
        await client.disconnect()


# -- a pool that admits masters only (what Sentinel mode uses) ---------------------------


class MasterOnlyAddress(RedisAddress):
    """A fixed address whose pool admits the server only while it is a master."""

    master_only = True


@pytest.fixture
def pair(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pair")
    servers = [ValkeyNode(workdir / "a").start(), ValkeyNode(workdir / "b").start()]
    yield servers
    for server in servers:
        server.stop()


def master_only_client(server: ValkeyNode) -> RedisClient:
    client = RedisClient(reactor, MasterOnlyAddress(host="127.0.0.1", port=server.port), poolsize=2)
    client.connect()
    return client


@pytest_twisted.ensureDeferred
async def test_a_replica_is_never_admitted_and_calls_fail_at_once(pair):
    master, replica = pair
    replica.command("REPLICAOF", "127.0.0.1", str(master.port))
    client = master_only_client(replica)
    try:
        await pause(0.5)  # time for several connection attempts
        assert not client.connected
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await client.execute("GET", "x")
        assert time.monotonic() - started < 0.1
        # promoted: admitted on the next attempt
        replica.command("REPLICAOF", "NO", "ONE")
        await wait_until(lambda: client.connected)
        assert await client.execute("SET", "x", "1") == "OK"
    finally:
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_master_demoted_under_the_pool_is_left_at_its_first_readonly(pair):
    first, other = pair
    client = master_only_client(first)
    try:
        await wait_until(lambda: client.pool_size_now == 2)
        first.command("REPLICAOF", "127.0.0.1", str(other.port))
        wait_for(first.replica_in_sync, 10, what="the demoted master to follow")
        with pytest.raises(StorageUnavailable) as caught:
            await client.execute("SET", "x", "1")
        assert "read-only replica" in str(caught.value)
        # every connection to it is closed at the first READONLY; none is admitted again
        await wait_until(lambda: not client.connected)
        await pause(0.3)
        assert not client.connected
        first.command("REPLICAOF", "NO", "ONE")
        await wait_until(lambda: client.pool_size_now == 2)
        assert await client.execute("SET", "x", "2") == "OK"
    finally:
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_master_that_moved_is_told_to_whoever_follows_it(tmp_path_factory):
    own = SentinelGroup(tmp_path_factory.mktemp("moving"), replicas=1).start()
    try:
        locator = MasterLocator(reactor, sentinels_of(own), own.service)
        moves: list = []
        locator.on_move(moves.append)
        first = await locator.locate()
        assert first == ("127.0.0.1", own.master_port()) and moves == []
        own.switch_over()  # blocks the reactor for a few seconds: nothing runs on it now
        await wait_until(lambda: "role:slave" in own.node(first[1]).command("INFO", "replication"))
        second = await locator.locate()
        assert second == ("127.0.0.1", own.master_port()) != first
        assert moves == [second]
    finally:
        own.stop()


# -- pub/sub through Sentinel -------------------------------------------------------------


def notifications_on(server: ValkeyNode, heard: list) -> Notifications:
    address = MasterOnlyAddress(host="127.0.0.1", port=server.port)
    notifications = Notifications(reactor, address, lambda channel, message: heard.append(message))
    notifications.start()
    return notifications


@pytest_twisted.ensureDeferred
async def test_pub_sub_subscribes_on_a_master_only(pair):
    master, replica = pair
    replica.command("REPLICAOF", "127.0.0.1", str(master.port))
    wait_for(replica.replica_in_sync, 10, what="the replica")
    heard: list = []
    notifications = notifications_on(replica, heard)
    try:
        await notifications.subscribe("news")
        await pause(0.5)
        assert replica.command("PUBSUB", "NUMSUB", "news")[1] == 0
        assert not notifications.is_subscribed("news")
        replica.command("REPLICAOF", "NO", "ONE")
        await wait_until(lambda: notifications.is_subscribed("news"))
        assert replica.command("PUBLISH", "news", "hello") == 1
        await wait_until(lambda: heard == ["hello"])
    finally:
        await notifications.stop()


@pytest_twisted.ensureDeferred
async def test_pub_sub_told_to_reconnect_subscribes_again(pair):
    server, _ = pair
    heard: list = []
    notifications = notifications_on(server, heard)
    try:
        await notifications.subscribe("news")
        await wait_until(lambda: notifications.is_subscribed("news"))
        clients_before = server.command("INFO", "stats")
        subscribers_before = subscriber_ids(server)
        assert subscribers_before
        notifications.reconnect()
        # It may drop and subscribe again between two looks: wait for the server to see
        # another connection subscribed, and the old one gone.
        await wait_until(
            lambda: subscriber_ids(server) - subscribers_before == subscriber_ids(server) != set()
        )
        await wait_until(lambda: notifications.is_subscribed("news"))
        assert server.command("INFO", "stats") != clients_before  # a new connection
        assert server.command("PUBLISH", "news", "again") == 1
        await wait_until(lambda: heard == ["again"])
    finally:
        await notifications.stop()
