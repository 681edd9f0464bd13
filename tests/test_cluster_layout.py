"""The queue engine on a Valkey Cluster: each queue (with its dead letters) in one slot,
the queues spread over the primaries, and every queue operation working as on one server.

In process (pytest-twisted) against real clusters of valkey-server processes; where the
keys are is checked with the tests' own RESP client, asking each primary.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from restmq.delivery.lease_sweeper import LeaseSweeper
from restmq.engine import keys
from restmq.engine.queues import QueueEngine
from restmq.errors import StorageUnavailable
from tests.support import (
    cluster_command,
    cluster_keys,
    cluster_owner,
    finish_slot_migration,
    start_slot_migration,
    until,
)

TAG = re.compile(r"\{([^}]*)\}")


async def _redis_now_ms(engine: QueueEngine, key: str) -> int:
    """Redis TIME (the clock of the leases) on the primary that serves ``key``."""
    seconds, micros = await engine.redis.execute("TIME", key=key)
    return int(seconds) * 1000 + int(micros) // 1000


async def _wait_past(engine: QueueEngine, key: str, deadline_ms: int) -> None:
    """Return once the clock of ``key``'s primary has passed ``deadline_ms``."""
    while (now := await _redis_now_ms(engine, key)) <= deadline_ms:
        await task.deferLater(reactor, (deadline_ms - now) / 1000 + 0.005, lambda: None)


def _list(cluster, queue_stem: str) -> list[str]:
    """A queue's message keys, oldest (next to be taken) first, read on its primary."""
    key = f"{queue_stem}:queue"
    return list(reversed(cluster_command(cluster_owner(cluster, key), "LRANGE", key, 0, -1)))


def _stats_of(stats, name):
    return next(s for s in stats if s.name == name)


# -- where the keys are -----------------------------------------------------------------

#: the same names every run: the same spread over the primaries (36, 35 and 29 of them)
#: (``ns:jobs`` is of the family ``ns``: its keys carry the tag ``{ns}``)
ROUTED = [f"jobs-{i}" for i in range(96)] + ["jobs.eu", "mail@home", "ns:jobs", "a.b@c:d"]
ROUTED_BY_FAMILY = {keys.family_of(name): name for name in ROUTED}


@pytest_twisted.ensureDeferred
async def test_each_queue_keeps_every_key_in_one_slot_and_the_queues_spread(
    valkey_cluster, cluster_engine
):
    engine = cluster_engine
    for name in ROUTED:
        stem = keys.CLUSTER.stem(name)
        assert await engine.add_many(name, ["a", "b"]) == [f"{stem}:1", f"{stem}:2"]
        assert await engine.add(name, "c", ttl=600) == f"{stem}:3"
        assert (await engine.peek(name)).key == f"{stem}:1"  # a refcount key too

    held: dict[str, list[tuple[str, object]]] = defaultdict(list)
    for node in valkey_cluster.primaries:
        for key in cluster_keys(node, "*"):
            tags = TAG.findall(key)
            if tags and tags[0] in ROUTED_BY_FAMILY:
                held[ROUTED_BY_FAMILY[tags[0]]].append((key, node))
    owners = Counter()
    for name in ROUTED:
        stem = keys.CLUSTER.stem(name)
        found = sorted(key for key, _ in held[name])
        assert found == sorted(
            [
                *(f"{stem}:{n}" for n in (1, 2, 3)),
                f"{stem}:1:refcount",
                f"{stem}:UUID",
                f"{stem}:queue",
                keys.CLUSTER.registry(name),
                f"queuestat::{stem}",
            ]
        )
        nodes = {node.port for _, node in held[name]}
        assert len(nodes) == 1, (name, nodes)
        slots = {cluster_command(held[name][0][1], "CLUSTER", "KEYSLOT", key) for key in found}
        assert len(slots) == 1, (name, slots)
        owners[nodes.pop()] += 1
    assert sorted(owners) == sorted(node.port for node in valkey_cluster.primaries)
    assert min(owners.values()) >= 20, owners

    for name in ROUTED:
        assert [m.value for m in await engine.pop_many(name, 2)] == ["a", "b"]
        last = await engine.pop(name)
        assert (last.key, last.value) == (f"{keys.CLUSTER.stem(name)}:3", "c")
        assert await engine.pop(name) is None
        assert await engine.purge(name) == 0
    for name in ROUTED:  # the session cluster is shared: leave nothing of these names
        for key, node in held[name]:
            cluster_command(node, "DEL", key)
    families = keys.CLUSTER_QUEUES
    cluster_command(cluster_owner(valkey_cluster, families), "SREM", families, *ROUTED_BY_FAMILY)


# -- every queue operation, on a cluster --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_add_take_peek_delete_and_purge(valkey_cluster, cluster_engine, queue):
    engine, stem = cluster_engine, f"{{{queue}}}"
    assert await engine.add_many(queue, ["a", "b", "c"]) == [f"{stem}:{n}" for n in (1, 2, 3)]
    short = await engine.add(queue, "short-lived", ttl=100)
    assert short == f"{stem}:4"
    owner = cluster_owner(valkey_cluster, short)
    assert 0 < cluster_command(owner, "PTTL", short) <= 100_000
    assert cluster_command(owner, "PTTL", f"{stem}:1") == -1
    assert await engine.length(queue) == 4

    peeked = await engine.peek(queue)
    assert (peeked.key, peeked.value, peeked.count) == (f"{stem}:1", "a", 1)
    assert (await engine.peek(queue)).count == 2
    first = await engine.pop(queue)
    assert (first.key, first.value, first.count) == (f"{stem}:1", "a", 2)
    assert await engine.delete(queue, f"{stem}:3") is True
    assert await engine.delete(queue, f"{stem}:3") is False
    rest = await engine.pop_many(queue, 10)
    assert [(m.key, m.value) for m in rest] == [(f"{stem}:2", "b"), (short, "short-lived")]
    assert 0 < rest[1].ttl_ms <= 100_000
    assert await engine.pop(queue) is None

    await engine.add_many(queue, ["x", "y"])
    [leased] = await engine.lease(queue, 30)
    assert await engine.purge(queue) == 2, "the pending message and the leased one"
    assert await engine.length(queue) == 0
    assert sorted(cluster_keys(owner, f"*{stem}*")) == sorted(
        [f"{stem}:UUID", f"{stem}:queues", f"queuestat::{stem}"]
    )
    assert [r.done for r in await engine.ack(queue, [leased.receipt])] == [False]


@pytest_twisted.ensureDeferred
async def test_settings_info_and_counts(valkey_cluster, cluster_engine, queue):
    engine, stem = cluster_engine, f"{{{queue}}}"
    assert (await engine.get_policy(queue), await engine.get_status(queue)) == ("broadcast", 1)
    assert await engine.set_policy(queue, "roundrobin") == "roundrobin"
    assert await engine.set_status(queue, started=False) == 0
    assert (await engine.get_policy(queue), await engine.get_status(queue)) == ("roundrobin", 0)
    owner = cluster_owner(valkey_cluster, f"{stem}:queuepolicy")
    assert cluster_command(owner, "GET", f"{stem}:queuepolicy") == "2"
    assert cluster_command(owner, "GET", f"queuestat::{stem}") == "0"

    await engine.add_many(queue, [str(n) for n in range(12)])
    await engine.lease(queue, 30)
    info = await engine.info(queue, newest=3)
    assert (info.stats.name, info.stats.length, info.stats.leased) == (queue, 11, 1)
    assert (info.stats.status, info.stats.policy, info.stats.dead) == (0, "roundrobin", None)
    assert info.last_number == 12
    assert info.newest_keys == [f"{stem}:{n}" for n in (12, 11, 10)]
    counts = await engine.queue_counts(queue)
    assert (counts.length, counts.leased, counts.dead, counts.consumers_elsewhere) == (
        11, 1, None, 0,
    )  # fmt: skip
    await engine.set_status(queue, started=True)
    assert await engine.get_status(queue) == 1


@pytest_twisted.ensureDeferred
async def test_stats_and_queues_list_every_queue_with_its_dead_letters_sorted(
    valkey_cluster, cluster_engine, queue
):
    engine = cluster_engine
    names = [f"{queue}-{letter}" for letter in "dcba"]  # in different slots, mostly
    for name, count in zip(names, (3, 2, 3, 4), strict=True):
        await engine.add_many(name, ["m"] * count)
    await engine.set_max_deliveries(names[0], 1)
    leased = await engine.lease(names[0], 30, n=2)
    await engine.release(names[0], [leased[0].receipt])  # the one delivery allowed: dead
    await engine.set_policy(names[1], "roundrobin")
    await engine.set_status(names[2], started=False)

    dead = f"{names[0]}:dead"
    listed = await engine.queues()
    assert [name for name in listed if name.startswith(queue)] == sorted([*names, dead])
    stats = await engine.stats()
    assert [s.name for s in stats] == sorted(s.name for s in stats)
    mine = {s.name: s for s in stats if s.name.startswith(queue)}
    assert sorted(mine) == sorted([*names, dead])
    d, c, b, a = (mine[name] for name in names)
    assert (d.length, d.leased, d.dead, d.policy, d.status) == (1, 1, 1, "broadcast", 1)
    assert (c.length, c.leased, c.dead, c.policy) == (2, 0, None, "roundrobin")
    assert (b.length, b.status) == (3, 0)
    assert (a.length, a.dead) == (4, None)
    assert (mine[dead].length, mine[dead].dead, mine[dead].leased) == (1, None, 0)
    assert (await engine.queue_counts(names[0])).dead == 1

    dead_list = f"{{{names[0]}}}:dead:queue"
    assert _list(valkey_cluster, f"{{{names[0]}}}:dead") == [leased[0].key]
    assert leased[0].key == f"{{{names[0]}}}:1", "the original key, nothing copied"
    slot_of = cluster_owner(valkey_cluster, dead_list)
    assert slot_of is cluster_owner(valkey_cluster, f"{{{names[0]}}}:queue")
    assert cluster_command(slot_of, "CLUSTER", "KEYSLOT", dead_list) == cluster_command(
        slot_of, "CLUSTER", "KEYSLOT", leased[0].key
    )
    [taken] = await engine.pop_many(dead, 5)
    assert (taken.key, taken.value) == (leased[0].key, "m")
    assert _stats_of(await engine.stats(), names[0]).dead == 0, "q:dead still exists, empty"


@pytest_twisted.ensureDeferred
async def test_leases_ack_extend_release_and_dead_letters(valkey_cluster, cluster_engine, queue):
    engine, stem = cluster_engine, f"{{{queue}}}"
    await engine.add_many(queue, ["a", "b", "c", "d"])
    a, b, c = await engine.lease(queue, 30, n=3)
    assert [m.receipt for m in (a, b, c)] == [f"{stem}:{n}@1" for n in (1, 2, 3)]
    assert (a.value, a.deliveries, a.lease) == ("a", 1, 30)
    owner = cluster_owner(valkey_cluster, f"{stem}:leased")
    assert cluster_command(owner, "ZCARD", f"{stem}:leased") == 3
    assert cluster_command(owner, "EXISTS", f"{stem}:leasing") == 1

    assert [r.done for r in await engine.ack(queue, [a.receipt])] == [True]
    assert cluster_command(owner, "EXISTS", a.key) == 0
    assert [r.done for r in await engine.ack(queue, [a.receipt])] == [False]
    assert await engine.extend(queue, b.receipt, 60) is True
    assert await engine.extend(queue, a.receipt, 60) is False
    assert [r.done for r in await engine.release(queue, [c.receipt])] == [True]
    assert _list(valkey_cluster, stem) == [c.key, f"{stem}:4"], "released: back at the head"
    again = await engine.lease(queue, 30)
    assert (again[0].receipt, again[0].deliveries) == (f"{stem}:3@2", 2)

    await engine.set_max_deliveries(queue, 2)
    assert await engine.get_max_deliveries(queue) == 2
    assert await engine.extend(queue, again[0].receipt, 0) is True  # a release: its 2nd end
    assert _list(valkey_cluster, f"{stem}:dead") == [c.key]
    [dead] = await engine.lease(f"{queue}:dead", 30)
    assert (dead.key, dead.value, dead.receipt) == (c.key, "c", f"{c.key}@1")
    assert [r.done for r in await engine.ack(f"{queue}:dead", [dead.receipt])] == [True]
    assert [r.done for r in await engine.ack(queue, [b.receipt])] == [True]
    assert await engine.set_max_deliveries(queue, 0) == 0
    assert [m.value for m in await engine.pop_many(queue, 5)] == ["d"]
    assert cluster_command(owner, "EXISTS", f"{stem}:leased", f"{stem}:leasing") == 0


@pytest_twisted.ensureDeferred
async def test_the_sweeper_ends_leases_that_ran_out_in_every_family(
    cluster_factory, cluster_engine_factory, queue
):
    # a cluster of its own: on the session cluster a running broker's sweeper would end
    # these leases first, and this sweeper would have nothing left to show
    own = cluster_factory(primaries=3, replicas=0)
    granting = await cluster_engine_factory(own)  # a broker that then goes away
    sweeping = await cluster_engine_factory(own)
    names = [f"{queue}-{n}" for n in range(6)]  # families in different slots
    ran_out = []
    for name in names:
        await granting.add_many(name, ["job", "next"])
        ran_out += await granting.lease(name, 1)
    await granting.set_max_deliveries(names[0], 1)  # its lease that runs out kills it
    await granting.redis.disconnect()
    latest = max(ran_out, key=lambda m: m.deadline_ms)
    for name in names:  # every primary's clock has passed every deadline
        await _wait_past(sweeping, f"{{{name}}}:queue", latest.deadline_ms)

    # one family per sweep: the sweeps go round the families, each one in turn
    sweeper = LeaseSweeper(sweeping, reactor, families_per_sweep=1)
    ended = 0
    for _ in await sweeping.families():
        ended += await sweeper.sweep()
    assert ended == len(names), "one lease ended in each family, by this sweeper"
    assert _list(own, f"{{{names[0]}}}") == [f"{{{names[0]}}}:2"]
    assert _list(own, f"{{{names[0]}}}:dead") == [f"{{{names[0]}}}:1"]
    for name in names[1:]:
        assert _list(own, f"{{{name}}}") == [f"{{{name}}}:1", f"{{{name}}}:2"]
        [again] = await sweeping.lease(name, 30)
        assert again.receipt == f"{{{name}}}:1@2"
    stats = {s.name: s for s in await sweeping.stats()}
    assert (stats[names[0]].leased, stats[names[0]].dead) == (0, 1)


@pytest_twisted.ensureDeferred
async def test_a_started_sweeper_returns_a_lease_that_ran_out(
    cluster_factory, cluster_engine_factory, queue
):
    own = cluster_factory(primaries=3, replicas=0)  # no other broker sweeps it
    engine = await cluster_engine_factory(own)
    await engine.add(queue, "job")
    [message] = await engine.lease(queue, 1)
    sweeper = LeaseSweeper(engine, reactor, interval=0.05)
    sweeper.start()
    try:
        await until(lambda: _list(own, f"{{{queue}}}") == [message.key], 10,
                    what="the sweep")  # fmt: skip
    finally:
        await sweeper.stop()
    assert await _redis_now_ms(engine, message.key) > message.deadline_ms
    [again] = await engine.lease(queue, 30)
    assert again.receipt == f"{message.key}@2"


@pytest_twisted.ensureDeferred
async def test_each_broker_sees_the_consumers_of_the_other(
    valkey_cluster, cluster_engine_factory, queue
):
    one = await cluster_engine_factory(valkey_cluster)
    two = await cluster_engine_factory(valkey_cluster)
    first, second = f"{queue}-a", f"{queue}-b"
    for name in (first, second):
        await one.add(name, "m")
    assert await one.report_consumers({first: 2, second: 1}, 30_000) is True
    assert await two.report_consumers({first: 3}, 30_000) is True

    assert (await one.queue_counts(first)).consumers_elsewhere == 3
    assert (await two.queue_counts(first)).consumers_elsewhere == 2
    assert (await two.queue_counts(second)).consumers_elsewhere == 1
    assert (await one.queue_counts(second)).consumers_elsewhere == 0
    seen_by_one = {s.name: s.other_consumers for s in await one.stats()}
    seen_by_two = {s.name: s.other_consumers for s in await two.stats()}
    assert (seen_by_one[first], seen_by_one[second]) == (3, 0)
    assert (seen_by_two[first], seen_by_two[second]) == (2, 1)

    assert await two.report_consumers({}, 30_000) is not None  # two has none left
    assert (await one.queue_counts(first)).consumers_elsewhere == 0
    assert await one.report_consumers({}, 30_000, refresh=True) is True


@pytest_twisted.ensureDeferred
async def test_streams_take_requeue_and_leased_stream_marks_over_several_slots(
    valkey_cluster, cluster_engine, queue
):
    engine = cluster_engine
    names = [f"{queue}-{n}" for n in range(6)]
    owners = {cluster_owner(valkey_cluster, f"{{{name}}}:queue").port for name in names}
    assert len(owners) > 1, "the queues are on more than one primary"
    for name in names:
        await engine.add_many(name, ["a", "b", "c"])
    await engine.mark_leased_streams(names, "bother", 30_000)
    for name in names:
        key = f"{{{name}}}:leasedstreams"
        owner = cluster_owner(valkey_cluster, key)
        assert cluster_command(owner, "ZSCORE", key, "bother") is not None
        batch = await engine.take_for_streams(
            name, roundrobin_batch=2, broadcast_batch=10, origin="me"
        )
        assert batch.started and batch.messages == [], "broadcast waits for the leased streams"

    await engine.mark_leased_streams(names, "bother", 0)  # withdrawn
    for name in names:
        assert cluster_command(cluster_owner(valkey_cluster, f"{{{name}}}:queue"), "EXISTS",
                               f"{{{name}}}:leasedstreams") == 0  # fmt: skip
        batch = await engine.take_for_streams(
            name, roundrobin_batch=2, broadcast_batch=10, origin="me"
        )
        assert (batch.policy, [m.value for m in batch.messages]) == ("broadcast", ["a", "b", "c"])
        await engine.requeue(name, batch.messages)
    await engine.set_policy(names[0], "roundrobin")
    batch = await engine.take_for_streams(
        names[0], roundrobin_batch=2, broadcast_batch=10, origin="me"
    )
    assert [m.key for m in batch.messages] == [f"{{{names[0]}}}:{n}" for n in (1, 2)]
    assert batch.published_to == 0
    await engine.requeue(names[0], batch.messages)
    for name in names:
        taken = await engine.pop_many(name, 10)
        assert [m.key for m in taken] == [f"{{{name}}}:{n}" for n in (1, 2, 3)]


# -- a slot moved to another primary --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_queue_whose_slot_moves_keeps_working_and_loses_nothing(
    cluster_factory, cluster_engine_factory
):
    cluster = cluster_factory(primaries=3, replicas=0)
    engine = await cluster_engine_factory(cluster)
    queue, stem = "moving", "{moving}"
    added = await engine.add_many(queue, [f"m{n}" for n in range(1, 21)])
    taken = [m.value for m in await engine.pop_many(queue, 5)]
    [leased] = await engine.lease(queue, 60)
    slot = cluster_command(cluster.primaries[0], "CLUSTER", "KEYSLOT", f"{stem}:queue")
    source = cluster_owner(cluster, f"{stem}:queue")
    target = next(node for node in cluster.primaries if node is not source)
    assert engine.redis.slot_map.primary_of(slot).port == source.port

    # during: every key of the queue went over, the slot is still the source's (ASK)
    moved = source.command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    start_slot_migration(slot, source, target, moved)
    assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    for n in range(21, 26):
        added.append(await engine.add(queue, f"m{n}"))
        added.append(await engine.add(queue, f"m{n}-ttl", ttl=600))
    taken += [(await engine.pop(queue)).value for _ in range(3)]
    # A script may not read or write several keys of a moving slot it did not declare (the
    # message keys): such calls are refused, to be retried, and change nothing.
    with pytest.raises(StorageUnavailable, match="being moved"):
        await engine.pop_many(queue, 5)
    with pytest.raises(StorageUnavailable, match="being moved"):
        await engine.add_many(queue, ["refused", "too"])
    with pytest.raises(StorageUnavailable, match="being moved"):
        await engine.ack(queue, [leased.receipt])
    assert await engine.length(queue) == 21
    assert engine.redis.slot_map.primary_of(slot).port == source.port, "ASK moves no slot"
    assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0, "all written over there"

    # after: the slot is the target's everywhere (MOVED)
    finish_slot_migration(cluster, slot, source, target)
    added += await engine.add_many(queue, [f"m{n}" for n in range(26, 36)])
    assert engine.redis.slot_map.primary_of(slot).port == target.port
    assert [r.done for r in await engine.ack(queue, [leased.receipt])] == [True]
    taken.append(leased.value)
    assert [s.length for s in await engine.stats() if s.name == queue] == [31]
    taken += [m.value for m in await engine.pop_many(queue, 100)]

    assert added[:20] == [f"{stem}:{n}" for n in range(1, 21)]
    assert len(set(added)) == len(added) == 40
    expected = [f"m{n}" for n in range(1, 21)]
    expected += [value for n in range(21, 26) for value in (f"m{n}", f"m{n}-ttl")]
    expected += [f"m{n}" for n in range(26, 36)]
    assert sorted(taken) == sorted(expected), "every message taken once, none lost"
    in_order = [value for value in taken if value != leased.value]
    assert in_order == [value for value in expected if value != leased.value]
    assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert sorted(cluster_keys(target, f"*{stem}*")) == sorted(
        [f"{stem}:UUID", f"{stem}:queues", f"queuestat::{stem}"]
    )


@pytest_twisted.ensureDeferred
async def test_every_operation_on_a_half_moved_queue_is_whole_or_refused(
    cluster_factory, cluster_engine_factory
):
    """Half of a queue's keys (bodies, peek counters, its list or lease keys) moved to the
    importing node: each operation either works or is refused (StorageUnavailable) having
    changed nothing; once the slot has moved every message is there exactly once."""
    cluster = cluster_factory(primaries=3, replicas=0)
    engine = await cluster_engine_factory(cluster)
    queue, stem = "halfway", "{halfway}"
    values = [f"h{n}" for n in range(1, 41)]
    await engine.add_many(queue, values)
    held = {m.value: m for m in await engine.pop_many(queue, 4)}  # taken, to requeue
    leases = {m.value: m for m in await engine.lease(queue, 600, 6)}
    await engine.peek(queue)  # a peek counter to move
    slot = cluster_command(cluster.primaries[0], "CLUSTER", "KEYSLOT", f"{stem}:queue")
    source = cluster_owner(cluster, f"{stem}:queue")
    target = next(node for node in cluster.primaries if node is not source)
    every = sorted(source.command("CLUSTER", "GETKEYSINSLOT", slot, 1000))
    start_slot_migration(slot, source, target, every[::2])

    done: dict[str, str] = {}  # value -> how it left the queue for good

    def gone(value: str, how: str) -> None:
        assert value not in done, f"{value} handed out twice: {done[value]}, {how}"
        done[value] = how

    async def attempt(call):
        try:
            return await call
        except StorageUnavailable:
            return None

    refused = []
    calls = {
        "pop": lambda: engine.pop(queue),
        "pop_many": lambda: engine.pop_many(queue, 3),
        "peek": lambda: engine.peek(queue),
        "lease": lambda: engine.lease(queue, 600),
        "lease n": lambda: engine.lease(queue, 600, 3),
        "take_for_streams": lambda: engine.take_for_streams(
            queue, roundrobin_batch=2, broadcast_batch=2, origin="b1"
        ),
        "lease_for_streams": lambda: engine.lease_for_streams(queue, 600, 2, origin="b1"),
        "sweep": lambda: engine.sweep_leases(family=queue),
    }
    for name, call in calls.items():
        result = await attempt(call())
        if result is None:
            refused.append(name)
        elif name in ("pop",) and result is not None:
            gone(result.value, name)
        elif name == "pop_many":
            for m in result:
                gone(m.value, name)
        elif name in ("lease", "lease n"):
            leases.update({m.value: m for m in result})
        elif name == "take_for_streams":
            for m in result.messages:
                gone(m.value, name)
        elif name == "lease_for_streams":
            leases.update({m.value: m for m in result.messages})
    first, second, third, *_ = sorted(leases.values(), key=lambda m: m.key)
    acked = await attempt(engine.ack(queue, [first.receipt]))
    if acked is None:
        refused.append("ack")
    elif acked[0].done:
        gone(leases.pop(first.value).value, "ack")
    released = await attempt(engine.release(queue, [second.receipt]))
    if released is None:
        refused.append("release")
    elif released[0].done:
        leases.pop(second.value)
    if await attempt(engine.extend(queue, third.receipt, 900)) is None:
        refused.append("extend")
    victim = f"{stem}:40"
    deleted = await attempt(engine.delete(queue, victim))
    if deleted is None:
        refused.append("delete")
    elif deleted:
        gone("h40", "delete")

    async def requeue() -> bool:
        await engine.requeue(queue, list(held.values()))
        return True

    if await attempt(requeue()) is None:
        refused.append("requeue")
        for value in held:
            gone(value, "taken, not requeued")
    purged = await attempt(engine.purge(queue))
    assert purged is None, "a purge of a moving queue is refused"

    finish_slot_migration(cluster, slot, source, target)
    results = await engine.ack(queue, [m.receipt for m in leases.values()])
    assert all(r.done for r in results), "every lease taken is intact"
    for m in leases.values():
        gone(m.value, "leased, acked after")
    for m in await engine.pop_many(queue, 100):
        gone(m.value, "popped after")
    assert sorted(done) == sorted(values), f"none lost, none twice (refused: {refused})"
    leftovers = sorted(cluster_keys(target, f"*{stem}*"))
    assert leftovers == sorted([f"{stem}:UUID", f"{stem}:queues", f"queuestat::{stem}"])
