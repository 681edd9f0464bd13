"""The cluster client: each call reaches the primary serving its keys, follows the
cluster when slots move (MOVED, ASK), and when a primary dies answers StorageUnavailable
for its slots, at once, until its replica has taken over.

In process (pytest-twisted) against real clusters of valkey-server processes; where the
keys are is checked with the tests' own RESP client, asking each primary.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.errors import OutcomeUnknown, StorageUnavailable
from restmq.storage.client import LuaScript
from restmq.storage.cluster_client import ClusterClient, UnroutedCommand, parse_seeds
from restmq.storage.cluster_slots import CrossSlotKeys, key_slot
from tests.support import free_port, redis_command, until

# Pushes a value on a queue list and numbers it with the queue's counter: two keys, one tag.
PUSH = LuaScript(
    "cluster_push",
    "local n = redis.call('INCR', KEYS[2]) "
    "redis.call('RPUSH', KEYS[1], ARGV[1] .. '#' .. n) return n",
)
READ = LuaScript("cluster_read", "return redis.call('GET', KEYS[1])", writes=False)
# Writes, then keeps its node busy for half a second: a write whose answer is still due.
SLOW_WRITE = LuaScript(
    "cluster_slow_write",
    "redis.call('SET', KEYS[1], 'written') local t = redis.call('TIME') "
    "local stop = t[1] * 1000000 + t[2] + 500000 "
    "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop return 1",
)
BOTH = LuaScript(
    "cluster_both", "return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}", writes=False
)


@pytest.fixture
def connect_cluster():
    """Connect ClusterClients to a LocalCluster, as a broker would; all are
    disconnected after the test."""
    clients: list[ClusterClient] = []

    async def connect(cluster, seeds: str | None = None, **kwargs) -> ClusterClient:
        kwargs.setdefault("poolsize", 2)
        client = ClusterClient(reactor, parse_seeds(seeds or ",".join(cluster.seeds)), **kwargs)
        clients.append(client)
        client.connect()
        await client.wait_until_ready()
        return client

    yield connect
    for client in clients:
        pytest_twisted.blockon(client.disconnect())


def command(node, *args):
    return redis_command(("127.0.0.1", node.port), *args)


def owner_of(cluster, key: str):
    """The live primary that holds ``key``'s slot: the one that does not redirect."""
    for node in cluster.nodes:
        if node.alive and not isinstance(command(node, "EXISTS", key), str):
            return node
    raise AssertionError(f"no live node serves {key!r}")


def pause(seconds: float = 0.05) -> defer.Deferred:
    """The reactor runs meanwhile (a polling interval, not a wait for anything)."""
    return task.deferLater(reactor, seconds, lambda: None)


def queue_keys(tag: str) -> tuple[str, str]:
    return f"{{{tag}}}:queue", f"{{{tag}}}:UUID"


@pytest_twisted.ensureDeferred
async def test_queues_spread_over_every_primary_and_each_call_reaches_its_keys(
    valkey_cluster, connect_cluster
):
    client = await connect_cluster(valkey_cluster, seeds=valkey_cluster.seeds[0])  # finds the rest
    tags = [f"q{i}" for i in range(100)]  # the same names every run: the same spread
    for tag in tags:
        await client.execute("DEL", *queue_keys(tag), key=queue_keys(tag)[0])
        for value in ("a", "b"):
            await client.run_script(PUSH, queue_keys(tag), [value])
    owners = Counter()
    for tag in tags:
        queue, counter = queue_keys(tag)
        assert await client.execute("LRANGE", queue, 0, -1, key=queue) == ["a#1", "b#2"]
        assert await client.execute("GET", counter, key=counter) == "2"
        owner = owner_of(valkey_cluster, queue)
        assert command(owner, "LLEN", queue) == 2
        owners[owner.port] += 1
    assert sorted(owners) == sorted(node.port for node in valkey_cluster.primaries)
    assert min(owners.values()) >= 20, owners
    for tag in tags:
        assert await client.execute("DEL", *queue_keys(tag), key=queue_keys(tag)[0]) == 2


@pytest_twisted.ensureDeferred
async def test_a_call_naming_keys_of_two_tags_is_refused_before_anything_is_sent(
    valkey_cluster, connect_cluster
):
    client = await connect_cluster(valkey_cluster)
    run = uuid.uuid4().hex[:6]
    first, second = f"{{a-{run}}}:queue", f"{{b-{run}}}:queue"
    with pytest.raises(CrossSlotKeys, match="same hash tag"):
        client.run_script(PUSH, [first, second], ["x"])
    with pytest.raises(UnroutedCommand, match="key="):
        client.execute("GET", first)
    for key in (first, second):
        assert command(owner_of(valkey_cluster, key), "EXISTS", key) == 0


@pytest_twisted.ensureDeferred
async def test_commands_without_keys_go_to_any_primary_or_to_every_one(
    valkey_cluster, connect_cluster
):
    client = await connect_cluster(valkey_cluster)
    assert await client.execute("PING") == "PONG"
    sizes = await client.on_every_primary("DBSIZE")
    assert sorted(sizes) == sorted(node.address for node in valkey_cluster.primaries)
    assert all(isinstance(size, int) for size in sizes.values())
    assert client.connected
    await until(lambda: client.pool_size_now == 3 * 2, what="every pool connection")


def migrate(cluster, slot: int, source, target, keys: list[str], finish: bool = True) -> None:
    """Move ``keys`` of ``slot`` from ``source`` to ``target`` as an operator does; with
    ``finish``, then give the slot to ``target`` on every primary."""
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    if finish:
        others = [node for node in cluster.primaries if node not in (source, target)]
        for node in [target, source, *others]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)


@pytest_twisted.ensureDeferred
async def test_a_slot_moved_to_another_primary_is_followed_and_nothing_is_lost(
    cluster_factory, connect_cluster
):
    cluster = cluster_factory(primaries=3, replicas=0)
    client = await connect_cluster(cluster)
    queue, counter = queue_keys("moving")
    for value in range(50):
        await client.run_script(PUSH, [queue, counter], [str(value)])
    slot = key_slot(queue)
    source = owner_of(cluster, queue)
    target = next(node for node in cluster.primaries if node is not source)
    migrate(cluster, slot, source, target, [queue, counter])
    assert owner_of(cluster, queue) is target
    assert client.slot_map.primary_of(slot).port == source.port  # the client's map is old

    stored = await client.execute("LRANGE", queue, 0, -1, key=queue)
    assert stored == [f"{value}#{value + 1}" for value in range(50)]
    assert client.slot_map.primary_of(slot).port == target.port
    assert await client.run_script(PUSH, [queue, counter], ["after"]) == 51
    assert command(target, "LINDEX", queue, -1) == "after#51"


@pytest_twisted.ensureDeferred
async def test_a_key_already_migrated_from_a_slot_in_migration_is_read_where_it_went(
    cluster_factory, connect_cluster
):
    cluster = cluster_factory(primaries=3, replicas=0)
    client = await connect_cluster(cluster)
    gone, staying = "{half}:gone", "{half}:staying"
    await client.execute("SET", gone, "over there", key=gone)
    await client.execute("SET", staying, "still here", key=staying)
    slot = key_slot(gone)
    source = owner_of(cluster, gone)
    target = next(node for node in cluster.primaries if node is not source)
    migrate(cluster, slot, source, target, [gone], finish=False)

    assert await client.execute("GET", gone, key=gone) == "over there"  # ASK, then ASKING
    assert await client.execute("GET", staying, key=staying) == "still here"
    # a script the importing node has never seen: loaded there behind ASKING too
    assert await client.run_script(READ, [gone]) == "over there"
    with pytest.raises(StorageUnavailable, match="try again"):  # TRYAGAIN: keys split
        await client.run_script(BOTH, [gone, staying])
    assert client.slot_map.primary_of(slot).port == source.port  # ASK moves no slot

    source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", staying)
    for node in cluster.primaries:
        node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
    assert await client.run_script(BOTH, [gone, staying]) == ["over there", "still here"]


@pytest_twisted.ensureDeferred
async def test_a_killed_primary_answers_unavailable_at_once_until_its_replica_takes_over(
    cluster_factory, connect_cluster
):
    cluster = cluster_factory(primaries=3, replicas=1)
    client = await connect_cluster(cluster, wait_replicas=1, call_timeout=1.5)
    tags = [f"f{i}" for i in range(30)]
    for tag in tags:  # confirmed by a replica: no failover may lose them
        await client.run_script(PUSH, queue_keys(tag), ["before"], replicated=True)
    victim = owner_of(cluster, queue_keys(tags[0])[0])
    replica = next(node for node in cluster.replicas if node.shard == victim.shard)
    on_victim = [tag for tag in tags if owner_of(cluster, queue_keys(tag)[0]) is victim]
    elsewhere = [tag for tag in tags if tag not in on_victim]
    unanswered = client.run_script(SLOW_WRITE, [f"{{{on_victim[0]}}}:slow"])
    await pause(0.1)  # the script runs on the victim now
    cluster.kill(victim)
    with pytest.raises(OutcomeUnknown, match="may have happened"):
        await unanswered
    await until(lambda: not client.connected, 5, what="the client to see the primary gone")

    slowest = 0.0
    refused = 0
    while replica.live_role() != "primary":
        started = time.monotonic()
        try:
            await client.run_script(PUSH, queue_keys(on_victim[0]), ["during"])
        except StorageUnavailable:
            refused += 1
        else:
            break
        finally:
            slowest = max(slowest, time.monotonic() - started)
        for tag in elsewhere[:3]:  # the other shards keep working
            await client.run_script(PUSH, queue_keys(tag), ["during"])
        await pause()
    assert refused > 0
    assert slowest < 0.5  # at once: nothing waits for a node that is gone

    promoted = time.monotonic()
    written = False
    while not written:
        assert time.monotonic() - promoted < 10, "no write to the failed-over slot in 10 s"
        try:
            await client.run_script(PUSH, queue_keys(on_victim[0]), ["after"])
            written = True
        except StorageUnavailable:
            await pause()
    for tag in on_victim:
        queue = queue_keys(tag)[0]
        stored = await client.execute("LRANGE", queue, 0, -1, key=queue)
        assert stored[0] == "before#1"
    assert command(replica, "LINDEX", queue_keys(on_victim[0])[0], -1).startswith("after#")


@pytest_twisted.ensureDeferred
async def test_with_no_node_reachable_a_call_fails_at_once():
    client = ClusterClient(reactor, [("127.0.0.1", free_port())])
    client.connect()
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="no node of the Valkey Cluster"):
            await client.execute("GET", "{q}:queue", key="{q}:queue")
        with pytest.raises(StorageUnavailable):
            await client.run_script(PUSH, queue_keys("q"), ["x"])
        assert time.monotonic() - started < 0.5
        assert not client.connected
    finally:
        await client.disconnect()
