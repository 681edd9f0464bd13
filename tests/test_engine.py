"""QueueEngine against a real Valkey, in process (pytest-twisted): the atomic scripts."""

from __future__ import annotations

import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_take_for_streams_then_requeue_restores_order_and_ttl(engine, server):
    keys = await engine.add_many("jobs", ["a", "b", "c"])
    await engine.add("jobs", "short-lived", ttl=100)
    batch = await engine.take_for_streams(
        "jobs", roundrobin_batch=10, broadcast_batch=10, origin="me"
    )
    assert batch.started and batch.policy == "broadcast"
    assert [m.value for m in batch.messages] == ["a", "b", "c", "short-lived"]
    assert [m.ttl_ms for m in batch.messages[:3]] == [-1, -1, -1]
    assert 0 < batch.messages[3].ttl_ms <= 100_000
    assert server.command("LLEN", "jobs:queue") == 0
    assert server.command("EXISTS", keys[0]) == 0, "taken bodies are deleted"
    await engine.requeue("jobs", batch.messages)
    again = await engine.pop_many("jobs", 10)
    assert [m.key for m in again] == [m.key for m in batch.messages]
    assert server.command("KEYS", "jobs:[0-9]*") == []


@pytest_twisted.ensureDeferred
async def test_requeued_ttl_is_kept(engine, server):
    key = await engine.add("t", "v", ttl=50)
    batch = await engine.take_for_streams("t", roundrobin_batch=1, broadcast_batch=1, origin="x")
    await engine.requeue("t", batch.messages)
    ttl = server.command("PTTL", key)
    assert 0 < ttl <= 50_000


@pytest_twisted.ensureDeferred
async def test_stopped_queue_gives_nothing_to_streams(engine, server):
    await engine.add("s", "held")
    await engine.set_status("s", started=False)
    batch = await engine.take_for_streams("s", roundrobin_batch=5, broadcast_batch=5, origin="x")
    assert not batch.started and batch.messages == []
    assert server.command("LLEN", "s:queue") == 1


@pytest_twisted.ensureDeferred
async def test_roundrobin_batch_size_and_no_publication(engine, server):
    await engine.set_policy("r", "roundrobin")
    await engine.add_many("r", [str(i) for i in range(10)])
    batch = await engine.take_for_streams("r", roundrobin_batch=3, broadcast_batch=50, origin="x")
    assert batch.policy == "roundrobin"
    assert [m.value for m in batch.messages] == ["0", "1", "2"]
    assert batch.published_to == 0


@pytest_twisted.ensureDeferred
async def test_numeric_looking_bodies_stay_text(engine):
    await engine.add("n", "007")
    await engine.add("n", "1.10")
    assert [m.value for m in await engine.pop_many("n", 5)] == ["007", "1.10"]


@pytest_twisted.ensureDeferred
async def test_channels_carry_the_database_number(engine):
    assert engine.channel("q") == "restmq:notify:0:q"
    assert engine.queue_of_channel("restmq:notify:0:q") == "q"
    assert engine.queue_of_channel("restmq:notify:3:q") is None
