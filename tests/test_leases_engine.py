"""Leases, acks, extend/release, expiry and dead letters: QueueEngine on a real Valkey.

Leases are 1 s long where they must run out; the tests wait on Redis TIME (the
clock the scripts use) rather than sleeping a fixed time.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from restmq.delivery.lease_sweeper import LeaseSweeper
from restmq.engine.keys import LEASING
from restmq.engine.queues import QueueEngine
from restmq.errors import StorageUnavailable
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from restmq.storage.notify import Notifications


@pytest.fixture
def other_engine(server, connect_client):
    """A second broker's engine on the same Redis."""
    return QueueEngine(connect_client(server))


async def _sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def _redis_now_ms(engine: QueueEngine) -> int:
    seconds, micros = await engine.redis.execute("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def _wait_past(engine: QueueEngine, deadline_ms: int) -> None:
    """Return once Redis's clock has passed ``deadline_ms``: the lease has run out."""
    while (now := await _redis_now_ms(engine)) <= deadline_ms:
        await _sleep((deadline_ms - now) / 1000 + 0.005)


async def _wait_until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await _sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _list(server, queue: str) -> list[str]:
    """The queue's keys, oldest (next to be taken) first."""
    return list(reversed(server.command("LRANGE", f"{queue}:queue", "0", "-1")))


def _stats_of(stats, name):
    return next(s for s in stats if s.name == name)


# -- taking under a lease -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lease_hands_out_with_receipt_and_keeps_the_body(engine, server):
    await engine.add_many("q", ["a", "b", "c"])
    before = await _redis_now_ms(engine)
    leased = await engine.lease("q", 30, n=2)
    assert [(m.key, m.value, m.receipt, m.deliveries, m.lease) for m in leased] == [
        ("q:1", "a", "q:1@1", 1, 30),
        ("q:2", "b", "q:2@1", 1, 30),
    ]
    assert all(m.count == 0 and m.ttl_ms == -1 for m in leased)
    assert before + 30_000 <= leased[0].deadline_ms <= before + 31_000
    assert server.command("GET", "q:1") == "a", "a leased message keeps its body"
    assert float(server.command("ZSCORE", "q:leased", "q:1")) == leased[0].deadline_ms
    assert server.command("HGET", "q:deliveries", "q:2") == "1"
    assert _list(server, "q") == ["q:3"]
    assert server.command("ZRANGE", LEASING, "0", "-1") == ["q"]


@pytest_twisted.ensureDeferred
async def test_lease_skips_expired_messages_and_reports_ttl(engine, server):
    gone = await engine.add("q", "expires")
    await engine.add("q", "short-lived", ttl=60)
    server.command("PEXPIRE", gone, "1")
    await _sleep(0.01)
    [message] = await engine.lease("q", 30)
    assert message.value == "short-lived"
    assert 0 < message.ttl_ms <= 60_000
    assert server.command("HEXISTS", "q:deliveries", gone) == 0


@pytest_twisted.ensureDeferred
async def test_empty_queue_leases_nothing_and_creates_no_key(engine, server):
    assert await engine.lease("nothing", 30, n=5) == []
    assert server.command("KEYS", "*") == []


# -- acks ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ack_deletes_the_message_and_its_lease(engine, server):
    await engine.add("q", "job")
    [message] = await engine.lease("q", 30)
    [result] = await engine.ack("q", [message.receipt])
    assert (result.key, result.receipt, result.done) == ("q:1", "q:1@1", True)
    assert sorted(server.command("KEYS", "*")) == ["QUEUESET", "q:UUID", "queuestat::q"]


@pytest_twisted.ensureDeferred
async def test_late_ack_is_refused_and_changes_nothing(engine, server):
    await engine.add("q", "job")
    [first] = await engine.lease("q", 1)
    await _wait_past(engine, first.deadline_ms)
    assert [r.done for r in await engine.ack("q", first.receipt)] == [False]
    assert server.command("GET", "q:1") == "job", "a late ack deletes nothing"
    [second] = await engine.lease("q", 30)
    assert (second.key, second.receipt, second.deliveries) == ("q:1", "q:1@2", 2)
    # the earlier delivery's receipt stays refused while the new lease is live
    assert [r.done for r in await engine.ack("q", first.receipt)] == [False]
    assert server.command("GET", "q:1") == "job"
    assert [r.done for r in await engine.ack("q", second.receipt)] == [True]
    assert server.command("EXISTS", "q:1") == 0


@pytest_twisted.ensureDeferred
async def test_a_well_formed_receipt_of_a_message_never_leased_is_not_acked(engine, server):
    await engine.add("q", "job")
    await engine.lease("q", 30)
    assert [r.done for r in await engine.ack("q", ["q:7@1"])] == [False]
    assert server.command("ZCARD", "q:leased") == 1


@pytest_twisted.ensureDeferred
async def test_several_receipts_in_one_ack(engine, server):
    await engine.add_many("q", ["a", "b", "c"])
    a, b, c = await engine.lease("q", 30, n=3)
    assert [r.done for r in await engine.ack("q", [a.receipt])] == [True]
    results = await engine.ack("q", [a.receipt, b.receipt, "q:3@7", c.receipt, b.receipt])
    assert [(r.key, r.done) for r in results] == [
        ("q:1", False),  # acked already
        ("q:2", True),
        ("q:3", False),  # not this delivery
        ("q:3", True),
        ("q:2", False),  # twice in one call: once
    ]
    assert server.command("KEYS", "q:[0-9]*") == []
    assert server.command("EXISTS", "q:leased", "q:deliveries", LEASING) == 0


# -- extend and release -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_extend_holds_past_the_original_deadline(engine, server):
    await engine.add("q", "job")
    [message] = await engine.lease("q", 1)
    assert await engine.extend("q", message.receipt, 30) is True
    await _wait_past(engine, message.deadline_ms)
    assert await engine.lease("q", 30) == [], "the extended lease did not run out"
    assert await engine.requeue_overdue("q") == 0
    assert [r.done for r in await engine.ack("q", message.receipt)] == [True]


@pytest_twisted.ensureDeferred
async def test_extend_needs_the_live_lease_of_this_delivery(engine, server):
    await engine.add("q", "job")
    [message] = await engine.lease("q", 1)
    assert await engine.extend("q", "q:1@2", 30) is False
    await _wait_past(engine, message.deadline_ms)
    assert await engine.extend("q", message.receipt, 30) is False
    assert await engine.extend("q", message.receipt, 0) is False


@pytest_twisted.ensureDeferred
async def test_release_puts_the_message_back_at_the_head(engine, server):
    await engine.add_many("q", ["a", "b", "c"])
    [a] = await engine.lease("q", 30)
    assert await engine.extend("q", a.receipt, 0) is True
    assert _list(server, "q") == ["q:1", "q:2", "q:3"]
    assert server.command("ZCARD", "q:leased") == 0
    [again] = await engine.lease("q", 30)
    assert (again.key, again.value, again.receipt) == ("q:1", "a", "q:1@2")
    assert await engine.extend("q", a.receipt, 0) is False, "the old receipt is spent"


@pytest_twisted.ensureDeferred
async def test_release_of_several_keeps_their_order(engine, server):
    await engine.add_many("q", ["a", "b", "c"])
    a, b = await engine.lease("q", 30, n=2)
    results = await engine.release("q", [a.receipt, b.receipt, "q:3@1"])
    assert [r.done for r in results] == [True, True, False]
    assert [m.value for m in await engine.pop_many("q", 5)] == ["a", "b", "c"]


@pytest_twisted.ensureDeferred
async def test_an_undelivered_release_does_not_count(engine, server):
    await engine.set_max_deliveries("q", 1)
    await engine.add("q", "job")
    [message] = await engine.lease("q", 30)
    [result] = await engine.release("q", [message.receipt], delivered=False)
    assert result.done
    assert _list(server, "q") == ["q:1"], "not dead: nobody ever saw it"
    assert server.command("HEXISTS", "q:deliveries", "q:1") == 0
    [again] = await engine.lease("q", 30)
    assert again.receipt == "q:1@1"


# -- expiry ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_lease_that_ran_out_goes_back_to_the_head_on_the_next_lease(engine, server):
    await engine.add_many("q", ["a", "b"])
    [a] = await engine.lease("q", 1)
    await _wait_past(engine, a.deadline_ms)
    [again] = await engine.lease("q", 30)
    assert (again.value, again.receipt, again.deliveries) == ("a", "q:1@2", 2)
    assert _list(server, "q") == ["q:2"]


@pytest_twisted.ensureDeferred
async def test_overdue_leases_return_in_queue_order(engine, server):
    """The lease that ran out first goes nearest the head; a batch keeps its order."""
    await engine.add_many("q", [str(i) for i in range(1, 13)])
    early = await engine.lease("q", 1, n=10)  # q:1..q:10, q:10 after q:9 though "q:10" < "q:9"
    later = await engine.lease("q", 2)  # q:11, runs out last
    await _wait_past(engine, later[0].deadline_ms)
    assert early[0].deadline_ms < later[0].deadline_ms
    assert await engine.requeue_overdue("q") == 11
    expected = [f"q:{i}" for i in range(1, 13)]
    assert _list(server, "q") == expected
    assert server.command("EXISTS", "q:leased", LEASING) == 0


@pytest_twisted.ensureDeferred
async def test_requeue_overdue_is_bounded(engine, server):
    """A bounded call ends the leases that ran out last: the next call's go in front."""
    await engine.add_many("q", ["a", "b", "c", "d", "e"])
    first = await engine.lease("q", 1)
    await _sleep(0.005)
    await engine.lease("q", 1)
    await _sleep(0.005)
    together = await engine.lease("q", 1, n=2)  # one deadline: never split
    await _sleep(0.005)
    last = await engine.lease("q", 1)
    assert first[0].deadline_ms < together[0].deadline_ms < last[0].deadline_ms
    await _wait_past(engine, last[0].deadline_ms)
    assert await engine.requeue_overdue("q", limit=2) == 1, "q:3 and q:4 stay together"
    assert _list(server, "q") == ["q:5"]
    assert await engine.requeue_overdue("q", limit=3) == 3
    assert _list(server, "q") == ["q:2", "q:3", "q:4", "q:5"]
    assert await engine.requeue_overdue("q", limit=3) == 1
    assert _list(server, "q") == ["q:1", "q:2", "q:3", "q:4", "q:5"]


@pytest_twisted.ensureDeferred
async def test_a_message_expired_while_leased_is_forgotten(engine, server):
    await engine.add("q", "job", ttl=60)
    [message] = await engine.lease("q", 1)
    server.command("DEL", "q:1")  # as if its ttl ran out
    await _wait_past(engine, message.deadline_ms)
    assert await engine.requeue_overdue("q") == 0
    assert sorted(server.command("KEYS", "*")) == ["QUEUESET", "q:UUID", "queuestat::q"]


@pytest_twisted.ensureDeferred
async def test_sweeper_of_another_broker_returns_a_dead_brokers_lease(engine, other_engine, server):
    await engine.add("q", "job")
    [message] = await engine.lease("q", 1)
    await engine.redis.disconnect()  # the broker that granted the lease is gone
    heard: list[str] = []
    listener = Notifications(
        reactor,
        RedisAddress(host="127.0.0.1", port=server.port),
        lambda channel, notice: heard.append(notice),
    )
    listener.start()
    sweeper = LeaseSweeper(other_engine, reactor, interval=0.05)
    try:
        await listener.subscribe(other_engine.channel("q"))
        sweeper.start()
        await _wait_until(lambda: server.command("LLEN", "q:queue") == 1, what="the sweep")
        await _wait_until(lambda: "add" in heard, what="the wake-up notice")
    finally:
        await sweeper.stop()
        await listener.stop()
    assert await _redis_now_ms(other_engine) > message.deadline_ms
    [again] = await other_engine.lease("q", 30)
    assert again.receipt == "q:1@2"


@pytest_twisted.ensureDeferred
async def test_sweep_steps_are_bounded_and_say_when_more_remain(engine, server):
    for name in ("a", "b", "c"):
        await engine.add(name, "job")
        [message] = await engine.lease(name, 1)
    await _wait_past(engine, message.deadline_ms)
    first = await engine.sweep_leases(max_queues=2, max_leases=10)
    assert (first.queues, first.requeued, first.dead, first.more) == (2, 2, 0, True)
    second = await engine.sweep_leases(max_queues=2, max_leases=10)
    assert (second.queues, second.requeued, second.more) == (1, 1, False)
    assert [server.command("LLEN", f"{name}:queue") for name in "abc"] == [1, 1, 1]
    assert server.command("EXISTS", LEASING) == 0
    assert (await engine.sweep_leases()).queues == 0


@pytest_twisted.ensureDeferred
async def test_sweeper_sweep_loops_while_more_remain(engine, server):
    await engine.add_many("q", ["a", "b", "c", "d", "e"])
    leased = await engine.lease("q", 1, n=5)
    await _wait_past(engine, leased[0].deadline_ms)
    sweeper = LeaseSweeper(engine, reactor, leases_per_call=2, calls_per_sweep=2)
    assert await sweeper.sweep() == 4, "two calls of two"
    assert await sweeper.sweep() == 1
    assert _list(server, "q") == ["q:1", "q:2", "q:3", "q:4", "q:5"]


@pytest_twisted.ensureDeferred
async def test_the_leasing_index_follows_the_earliest_deadline(engine, server):
    await engine.add_many("q", ["a", "b"])
    a, b = await engine.lease("q", 30, n=2)
    await engine.extend("q", b.receipt, 10)
    index = float(server.command("ZSCORE", LEASING, "q"))
    assert index == float(server.command("ZSCORE", "q:leased", "q:2"))
    await engine.ack("q", [b.receipt])
    assert float(server.command("ZSCORE", LEASING, "q")) == a.deadline_ms
    await engine.ack("q", [a.receipt])
    assert server.command("EXISTS", LEASING) == 0


# -- dead letters -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_max_deliveries_sends_the_original_key_to_the_dead_letters(engine, server):
    assert await engine.set_max_deliveries("q", 2) == 2
    assert await engine.get_max_deliveries("q") == 2
    await engine.add_many("q", ["poison", "fine"])
    [first] = await engine.lease("q", 1)
    await _wait_past(engine, first.deadline_ms)
    [second] = await engine.lease("q", 1)
    assert second.receipt == "q:1@2"
    await _wait_past(engine, second.deadline_ms)
    assert await engine.requeue_overdue("q") == 1
    assert _list(server, "q") == ["q:2"]
    assert _list(server, "q:dead") == ["q:1"], "the original key, nothing copied"
    assert server.command("HEXISTS", "q:deliveries", "q:1") == 0
    assert "q:dead" in await engine.queues()
    assert await engine.get_status("q:dead") == 1
    assert server.command("KEYS", "q:dead:[0-9]*") == []
    [dead] = await engine.pop_many("q:dead", 5)
    assert (dead.key, dead.value) == ("q:1", "poison")
    assert server.command("EXISTS", "q:1") == 0


@pytest_twisted.ensureDeferred
async def test_dead_letters_can_be_leased_acked_and_deleted(engine, server):
    await engine.set_max_deliveries("q", 1)
    await engine.add_many("q", ["x", "y"])
    x, y = await engine.lease("q", 30, n=2)
    assert [r.done for r in await engine.release("q", [x.receipt, y.receipt])] == [True, True]
    assert _list(server, "q:dead") == ["q:1", "q:2"], "a release at the limit is an end too"
    [leased] = await engine.lease("q:dead", 30)
    assert (leased.key, leased.value, leased.receipt) == ("q:1", "x", "q:1@1")
    assert [r.done for r in await engine.ack("q:dead", [leased.receipt])] == [True]
    assert server.command("EXISTS", "q:1") == 0
    assert await engine.delete("q:dead", "q:2") is True
    assert server.command("EXISTS", "q:2", "q:dead:queue") == 0


@pytest_twisted.ensureDeferred
async def test_max_deliveries_zero_means_no_limit_and_no_key(engine, server):
    assert await engine.set_max_deliveries("q", 1000) == 1000
    assert await engine.get_max_deliveries("q") == 1000
    assert await engine.set_max_deliveries("q", 0) == 0
    assert await engine.get_max_deliveries("q") == 0
    assert server.command("EXISTS", "q:maxdeliveries") == 0, "0 means no limit: no key"


# -- purge and stats ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_purge_drops_leases(engine, server):
    await engine.add_many("q", ["a", "b", "c"])
    a, _ = await engine.lease("q", 30, n=2)
    await engine.extend("q", a.receipt, 0)  # back in the queue, with a delivery count
    assert await engine.purge("q") == 3
    assert sorted(server.command("KEYS", "*")) == ["QUEUESET", "q:UUID", "queuestat::q"]
    assert [r.done for r in await engine.ack("q", [a.receipt])] == [False]


@pytest_twisted.ensureDeferred
async def test_stats_and_info_count_leased_and_dead(engine, server):
    await engine.add_many("q", ["a", "b", "c"])
    await engine.add("plain", "p")
    a, _ = await engine.lease("q", 30, n=2)
    stats = await engine.stats()
    assert (_stats_of(stats, "q").length, _stats_of(stats, "q").leased) == (1, 2)
    assert _stats_of(stats, "q").dead is None
    assert (_stats_of(stats, "plain").leased, _stats_of(stats, "plain").dead) == (0, None)
    await engine.set_max_deliveries("q", 1)
    await engine.release("q", [a.receipt])
    stats = await engine.stats()
    assert (_stats_of(stats, "q").leased, _stats_of(stats, "q").dead) == (1, 1)
    assert (_stats_of(stats, "q:dead").length, _stats_of(stats, "q:dead").dead) == (1, None)
    info = await engine.info("q")
    assert (info.stats.length, info.stats.leased, info.stats.dead) == (1, 1, 1)
    assert info.newest_keys == ["q:3"]
    await engine.pop("q:dead")
    assert _stats_of(await engine.stats(), "q").dead == 0, "q:dead still exists, empty"
    assert (await engine.info("plain")).stats.dead is None


@pytest_twisted.ensureDeferred
async def test_a_queue_never_leased_keeps_only_the_original_keys(engine, server):
    await engine.add_many("plain", ["a", "b", "c"])
    await engine.add("plain", "d", ttl=60)
    await engine.peek("plain")
    await engine.pop("plain")
    await engine.set_policy("plain", "roundrobin")
    await engine.get_max_deliveries("plain")
    await engine.set_max_deliveries("plain", 0)
    assert await engine.requeue_overdue("plain") == 0
    assert await engine.ack("plain", ["plain:2@1"]) != []
    await engine.sweep_leases()
    await engine.stats()
    await engine.info("plain")
    original = re.compile(r"QUEUESET|queuestat::plain|plain:(UUID|queue|queuepolicy|\d+)")
    keys = server.command("KEYS", "*")
    assert sorted(keys) == sorted(k for k in keys if original.fullmatch(k))
    assert "plain:queue" in keys and "plain:4" in keys


@pytest_twisted.ensureDeferred
async def test_a_running_broker_sweeps_leases_it_did_not_grant(shared_broker, queue):
    """`twistd restmq` runs the sweeper: a lease granted by a broker now gone runs out."""
    client = RedisClient(reactor, RedisAddress(socket=str(shared_broker.data_dir / "valkey.sock")))
    client.connect()
    try:
        await client.wait_until_ready()
        granting = QueueEngine(client)
        await granting.add(queue, "job")
        [message] = await granting.lease(queue, 1)
    finally:
        await client.disconnect()
    await _wait_until(
        lambda: shared_broker.redis("LLEN", f"{queue}:queue") == 1, what="the broker's sweep"
    )
    assert shared_broker.redis("ZCARD", f"{queue}:leased") == 0
    assert shared_broker.redis("HGET", f"{queue}:deliveries", message.key) == "1"


@pytest_twisted.ensureDeferred
async def test_plain_takes_and_deletes_leave_no_lease_behind(engine, server):
    await engine.add_many("q", ["a", "b", "c", "d"])
    leased = await engine.lease("q", 30, n=3)
    await engine.release("q", [m.receipt for m in leased[:2]])  # q:1, q:2 back, counted
    assert [m.key for m in await engine.pop_many("q", 1)] == ["q:1"]
    batch = await engine.take_for_streams("q", roundrobin_batch=1, broadcast_batch=1, origin="x")
    assert [m.key for m in batch.messages] == ["q:2"]
    assert await engine.delete("q", "q:3") is True  # still leased
    assert [r.done for r in await engine.ack("q", [leased[2].receipt])] == [False]
    assert server.command("EXISTS", "q:leased", "q:deliveries") == 0
    assert (await engine.info("q")).stats.leased == 0


@pytest_twisted.ensureDeferred
async def test_the_sweeper_outlives_a_storage_outage(engine, server):
    await engine.add("q", "job")
    await engine.lease("q", 1)
    sweeper = LeaseSweeper(engine, reactor, interval=0.05)
    sweeper.start()
    try:
        server.stop()
        await _sleep(1.1)  # sweeps fail meanwhile; the lease runs out
        server.start()
        await _wait_until(lambda: server.command("LLEN", "q:queue") == 1, what="the sweep")
    finally:
        await sweeper.stop()
    assert (await engine.lease("q", 30))[0].receipt == "q:1@2"


@pytest_twisted.ensureDeferred
async def test_a_lease_granted_after_the_caller_gave_up_is_released_uncounted(server):
    client = RedisClient(
        reactor, RedisAddress(host="127.0.0.1", port=server.port), call_timeout=0.2
    )
    client.connect()
    try:
        await client.wait_until_ready()
        engine = QueueEngine(client)
        await engine.set_max_deliveries("q", 1)
        await engine.add_many("q", ["a", "b"])
        server.command("CLIENT", "PAUSE", "500", "WRITE")  # Redis answers too late
        with pytest.raises(StorageUnavailable):
            await engine.lease("q", 30)
        await _sleep(0.6)  # the pause is over: the lease has run, and its late reply came
        await _wait_until(lambda: server.command("LLEN", "q:queue") == 2, what="the release")
        assert server.command("EXISTS", "q:leased", "q:deliveries", "q:dead:queue") == 0
        [again] = await engine.lease("q", 30)
        assert (again.key, again.receipt) == ("q:1", "q:1@1")
    finally:
        await client.disconnect()
