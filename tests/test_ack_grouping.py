"""Acks of one queue made in the same reactor turn share one script call (group commit):
each caller still gets the results of its own receipts, or the failure they shared, and
Redis sees the acks before any later lease call of that queue. QueueEngine on a real
Valkey, in this process.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.errors import StorageUnavailable
from restmq.operations.validation import MAX_BATCH


def _script_calls(server) -> int:
    """EVALSHA calls Redis has run so far (INFO commandstats)."""
    info = server.command("INFO", "commandstats")
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


def _together(*calls) -> defer.Deferred:
    """Start the coroutines in this turn; their results once all are done."""
    return defer.gatherResults([defer.ensureDeferred(c) for c in calls], consumeErrors=True)


@pytest_twisted.ensureDeferred
async def test_acks_made_together_are_one_script_call_with_each_callers_results(engine, server):
    await engine.add_many("q", ["a", "b", "c", "d"])
    a, b, c, d = await engine.lease("q", 30, n=4)
    await engine.ack("q", [d.receipt])  # settled already: acking it again is refused
    before = _script_calls(server)
    first, second, third = await _together(
        engine.ack("q", [a.receipt]),
        engine.ack("q", [b.receipt, d.receipt]),
        engine.ack("q", [c.receipt, a.receipt]),  # a: the first caller got it
    )
    assert _script_calls(server) - before == 1
    assert [(r.key, r.done) for r in first] == [("q:1", True)]
    assert [(r.key, r.done) for r in second] == [("q:2", True), ("q:4", False)]
    assert [(r.key, r.done) for r in third] == [("q:3", True), ("q:1", False)]
    assert server.command("EXISTS", "q:1", "q:2", "q:3", "q:4", "q:leased") == 0


@pytest_twisted.ensureDeferred
async def test_acks_of_other_queues_or_other_turns_are_not_mixed(engine, server):
    await engine.add_many("q", ["a", "b"])
    await engine.add("r", "c")
    a, b = await engine.lease("q", 30, n=2)
    [c] = await engine.lease("r", 30)
    before = _script_calls(server)
    on_q, on_r = await _together(engine.ack("q", [a.receipt]), engine.ack("r", [c.receipt]))
    assert _script_calls(server) - before == 2  # one per queue
    assert [r.done for r in on_q + on_r] == [True, True]
    [later] = await engine.ack("q", [b.receipt])
    assert later.done
    assert _script_calls(server) - before == 3


@pytest_twisted.ensureDeferred
async def test_a_group_goes_out_at_the_batch_limit(engine, server):
    total = MAX_BATCH + MAX_BATCH // 2
    await engine.add_many("q", ["v"] * MAX_BATCH)
    await engine.add_many("q", ["v"] * (MAX_BATCH // 2))
    leased = list(await engine.lease("q", 30, n=MAX_BATCH))
    leased += await engine.lease("q", 30, n=MAX_BATCH // 2)
    receipts = [m.receipt for m in leased]
    thirds = [receipts[i : i + total // 3] for i in range(0, total, total // 3)]
    before = _script_calls(server)
    results = await _together(*(engine.ack("q", part) for part in thirds))
    assert _script_calls(server) - before == 2  # two thirds fill a call, the last is alone
    assert all(r.done for part in results for r in part)
    assert server.command("LLEN", "q:queue") == 0
    assert server.command("EXISTS", "q:leased") == 0


@pytest_twisted.ensureDeferred
async def test_a_release_after_an_ack_in_the_same_turn_finds_it_acked(engine, server):
    await engine.add("q", "a")
    [message] = await engine.lease("q", 30)
    acked, released = await _together(
        engine.ack("q", [message.receipt]), engine.release("q", [message.receipt])
    )
    # in the order they were made: the ack settled it, so the release finds nothing
    assert [r.done for r in acked] == [True]
    assert [r.done for r in released] == [False]
    assert server.command("LLEN", "q:queue") == 0
    assert server.command("EXISTS", "q:1") == 0


@pytest_twisted.ensureDeferred
async def test_every_caller_of_a_failed_group_gets_the_failure(engine, server):
    await engine.add_many("q", ["a", "b"])
    a, b = await engine.lease("q", 30, n=2)
    server.stop()
    for _ in range(250):
        if not engine.redis.connected:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    outcomes = await defer.DeferredList(
        [defer.ensureDeferred(engine.ack("q", [m.receipt])) for m in (a, b)],
        consumeErrors=True,
    )
    assert [ok for ok, _ in outcomes] == [False, False]
    for _, reason in outcomes:
        assert reason.check(StorageUnavailable)
    server.start()
    await engine.redis.wait_until_ready()
    results = await _together(engine.ack("q", [a.receipt]), engine.ack("q", [b.receipt]))
    assert [r.done for part in results for r in part] == [True, True]


@pytest_twisted.ensureDeferred
async def test_an_ack_made_while_a_full_group_fails_is_answered_too(engine, server):
    server.stop()
    for _ in range(250):
        if not engine.redis.connected:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    answered: list[str] = []

    def note(outcome, name: str):
        answered.append(name)
        return outcome

    def ack_again(reason):
        # answered while the full group is sent: a new ack of the same queue, at once
        note(None, "first")
        again = defer.ensureDeferred(engine.ack("q", ["q:1@1"]))
        again.addBoth(note, "again").addErrback(lambda f: f.trap(StorageUnavailable))

    first = defer.ensureDeferred(engine.ack("q", [f"q:{i}@1" for i in range(MAX_BATCH - 1)]))
    first.addErrback(ack_again)
    # does not fit beside the first: the first group goes out (and fails at once)
    second = defer.ensureDeferred(engine.ack("q", ["q:1@2", "q:2@2"]))
    second.addBoth(note, "second").addErrback(lambda f: f.trap(StorageUnavailable))
    for _ in range(50):
        if len(answered) == 3:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert sorted(answered) == ["again", "first", "second"]
