"""Delayed messages in the engine: invisible until due, then at the tail in due order,
moved by every take or by the sweep; the timer index keeps their queue; purge, stats.

Delays are 1 s; the tests wait on Redis TIME (the clock the scripts use) passing the due
times they read, never a fixed sleep.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, task

from restmq.delivery.lease_sweeper import LeaseSweeper
from restmq.engine.keys import LEASING
from restmq.engine.queues import QueueEngine
from restmq.storage.address import RedisAddress
from restmq.storage.notify import Notifications


async def _redis_now_ms(engine: QueueEngine) -> int:
    seconds, micros = await engine.redis.execute("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def _wait_until_due(engine: QueueEngine, server, queue: str) -> None:
    """Return once Redis's clock has passed the latest due time of ``queue``."""
    scores = server.command("ZRANGE", f"{queue}:delayed", "-1", "-1", "WITHSCORES")
    due = int(float(scores[1]))
    while (now := await _redis_now_ms(engine)) <= due:
        await task.deferLater(reactor, (due - now) / 1000 + 0.005, lambda: None)


async def _wait_until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _list(server, queue: str) -> list[str]:
    """The queue's keys, oldest (next to be taken) first."""
    return list(reversed(server.command("LRANGE", f"{queue}:queue", "0", "-1")))


@pytest_twisted.ensureDeferred
async def test_a_delayed_message_is_taken_by_nothing_until_it_is_due(engine, server):
    await engine.add("q", "now")
    late = await engine.add("q", "late", delay=1)
    assert (await engine.pop("q")).value == "now"
    assert await engine.pop("q") is None
    assert await engine.lease("q", 30, 5) == []
    assert await engine.peek("q") is None
    assert (await engine.queue_counts("q")).delayed == 1
    assert server.command("ZRANGE", LEASING, "0", "-1") == ["q"]
    await _wait_until_due(engine, server, "q")
    taken = await engine.pop("q")
    assert (taken.key, taken.value) == (late, "late")
    assert server.command("EXISTS", "q:delayed", LEASING) == 0
    assert (await engine.queue_counts("q")).delayed == 0


@pytest_twisted.ensureDeferred
async def test_due_messages_join_the_tail_in_due_order(engine, server):
    await engine.add("q", "last", delay=2)
    await engine.add("q", "first", delay=1)
    await engine.add_many("q", ["second", "third"], delay=1)
    await engine.add("q", "waiting")
    await _wait_until_due(engine, server, "q")
    await engine.add("q", "added after they were due")
    taken = await engine.pop_many("q", 10)
    assert [m.value for m in taken] == [
        "waiting",
        "added after they were due",  # due ones join the tail when a take moves them
        "first",
        "second",
        "third",
        "last",
    ]


@pytest_twisted.ensureDeferred
async def test_a_lease_and_a_peek_move_due_messages_first(engine, server):
    await engine.add("a", "for the lease", delay=1)
    await engine.add("b", "for the peek", delay=1)
    await _wait_until_due(engine, server, "a")
    await _wait_until_due(engine, server, "b")
    [leased] = await engine.lease("a", 30)
    assert leased.value == "for the lease"
    # the lease's deadline is the queue's place in the index now
    assert float(server.command("ZSCORE", LEASING, "a")) == leased.deadline_ms
    peeked = await engine.peek("b")
    assert peeked.value == "for the peek"
    assert _list(server, "b") == [peeked.key]


@pytest_twisted.ensureDeferred
async def test_the_sweep_moves_due_messages_with_no_take_and_announces_them(engine, server):
    heard: list[str] = []
    listener = Notifications(
        reactor,
        RedisAddress(host="127.0.0.1", port=server.port),
        lambda channel, notice: heard.append(notice),
    )
    listener.start()
    sweeper = LeaseSweeper(engine, reactor, interval=0.05)
    try:
        await listener.subscribe(engine.channel("q"))
        key = await engine.add("q", "due", delay=1)
        sweeper.start()
        await _wait_until(lambda: _list(server, "q") == [key], what="the sweep")
        await _wait_until(lambda: "add" in heard, what="the wake-up notice")
        assert server.command("EXISTS", "q:delayed", LEASING) == 0
    finally:
        await sweeper.stop()
        await listener.stop()


@pytest_twisted.ensureDeferred
async def test_a_sweep_step_moves_a_bounded_number_in_due_order(engine, server):
    keys = await engine.add_many("q", ["a", "b", "c"], delay=1)
    later = await engine.add("q", "d", delay=1)
    await _wait_until_due(engine, server, "q")
    # a bound of 2: the batch of 3 shares one due time and goes at once
    first = await engine.sweep_leases(max_due=2)
    assert first.moved in (3, 4)  # 4 when d was stored in the same millisecond
    while (await engine.sweep_leases(max_due=2)).moved:
        pass
    assert _list(server, "q") == [*keys, later]
    assert server.command("EXISTS", "q:delayed", LEASING) == 0


@pytest_twisted.ensureDeferred
async def test_the_timer_index_keeps_a_queue_with_delayed_messages_when_its_leases_end(
    engine, server
):
    await engine.add("q", "leased")
    [lease] = await engine.lease("q", 60)
    await engine.add("q", "delayed", delay=1)
    due = float(server.command("ZRANGE", "q:delayed", "0", "0", "WITHSCORES")[1])
    assert float(server.command("ZSCORE", LEASING, "q")) == due  # earlier than the lease
    [acked] = await engine.ack("q", lease.receipt)
    assert acked.done
    assert float(server.command("ZSCORE", LEASING, "q")) == due


@pytest_twisted.ensureDeferred
async def test_purge_drops_delayed_messages_and_stats_count_them(engine, server):
    await engine.add("q", "now")
    delayed = await engine.add_many("q", ["x", "y"], delay=60)
    [stats] = [s for s in await engine.stats() if s.name == "q"]
    assert (stats.length, stats.delayed) == (1, 2)
    assert (await engine.info("q")).stats.delayed == 2
    assert await engine.purge("q") == 3
    assert server.command("EXISTS", "q:delayed", LEASING, *delayed) == 0
    assert (await engine.queue_counts("q")).delayed == 0


@pytest_twisted.ensureDeferred
async def test_a_queue_that_uses_no_delay_keeps_its_keys(engine, server):
    await engine.add("q", "a")
    await engine.pop("q")
    await engine.add("q", "b")
    await engine.peek("q")
    assert server.command("EXISTS", "q:delayed", LEASING) == 0
    assert (await engine.queue_counts("q")).delayed == 0
