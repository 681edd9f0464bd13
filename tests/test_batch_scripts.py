"""Batches of messages in one script call: order, ttl, peek counts, gaps and the byte
budget, for batches larger than the scripts' inner chunks (real Valkey, in process)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from restmq.engine import queues
from restmq.engine.queues import QueueEngine
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient

LARGE = 2500  # more than one inner chunk of the add and pop scripts


@pytest.fixture
def server(valkey_factory):
    return valkey_factory()


@pytest.fixture
def engine(server):
    client = RedisClient(reactor, RedisAddress(host="127.0.0.1", port=server.port), poolsize=2)
    client.connect()
    pytest_twisted.blockon(defer.ensureDeferred(client.wait_until_ready()))
    yield QueueEngine(client)
    pytest_twisted.blockon(client.disconnect())


@pytest_twisted.ensureDeferred
async def test_a_large_batch_comes_back_in_order_and_leaves_nothing_behind(engine, server):
    values = [f"m{i}" for i in range(LARGE)]
    keys = await engine.add_many("big", values)
    assert keys == [f"big:{i}" for i in range(1, LARGE + 1)]
    assert server.command("LLEN", "big:queue") == LARGE

    first = await engine.pop_many("big", 1200)
    rest = await engine.pop_many("big", LARGE)
    assert [m.value for m in first + rest] == values
    assert [m.key for m in first + rest] == keys
    assert all(m.count == 0 and m.ttl_ms == -1 for m in first + rest)
    assert server.command("EXISTS", "big:queue") == 0
    assert server.command("KEYS", "big:[0-9]*") == []
    assert await engine.pop_many("big", 10) == []


@pytest_twisted.ensureDeferred
async def test_a_batch_with_a_ttl_keeps_it_on_every_message(engine, server):
    keys = await engine.add_many("short", [f"v{i}" for i in range(LARGE)], ttl=60)
    assert 0 < server.command("PTTL", keys[0]) <= 60_000
    assert 0 < server.command("PTTL", keys[-1]) <= 60_000
    taken = await engine.pop_many("short", LARGE)
    assert len(taken) == LARGE
    assert all(0 < m.ttl_ms <= 60_000 for m in taken)


@pytest_twisted.ensureDeferred
async def test_a_batch_pop_skips_vanished_bodies_and_still_takes_n(engine, server):
    keys = await engine.add_many("gaps", [f"v{i}" for i in range(10)])
    server.command("DEL", keys[1], keys[2], keys[5])  # expired or deleted meanwhile
    taken = await engine.pop_many("gaps", 5)
    assert [m.value for m in taken] == ["v0", "v3", "v4", "v6", "v7"]
    assert [m.value for m in await engine.pop_many("gaps", 5)] == ["v8", "v9"]


@pytest_twisted.ensureDeferred
async def test_a_batch_pop_reports_peek_counts_and_clears_them(engine, server):
    keys = await engine.add_many("peeked", ["a", "b", "c"])
    await engine.peek("peeked")
    await engine.peek("peeked")
    taken = await engine.pop_many("peeked", 3)
    assert [(m.value, m.count) for m in taken] == [("a", 2), ("b", 0), ("c", 0)]
    assert server.command("EXISTS", keys[0] + ":refcount") == 0


@pytest_twisted.ensureDeferred
async def test_a_batch_pop_stops_at_the_byte_budget_and_keeps_the_order(
    engine, server, monkeypatch
):
    # the budget is a module setting: a small one stands in for 16 MiB of bodies
    monkeypatch.setattr(queues, "POP_BYTES", 25)
    await engine.add_many("budget", [f"{i:02d}" * 5 for i in range(8)])  # 10 bytes each
    taken = await engine.pop_many("budget", 8)
    assert [m.value for m in taken] == ["0000000000", "0101010101", "0202020202"]
    assert server.command("LLEN", "budget:queue") == 5
    later = await engine.pop_many("budget", 8)
    assert [m.value[:2] for m in later] == ["03", "04", "05"]
    assert [m.value[:2] for m in await engine.pop_many("budget", 8)] == ["06", "07"]


@pytest_twisted.ensureDeferred
async def test_bodies_another_client_stored_as_bytes_come_back_as_text(engine, server):
    await engine.add_many("raw", ["before"])
    server.command("SET", "raw:90", b"caf\xc3\xa9")  # UTF-8
    server.command("SET", "raw:91", b"\xff\xfe")  # not UTF-8
    server.command("LPUSH", "raw:queue", "raw:90", "raw:91")
    await engine.add_many("raw", ["after"])
    taken = await engine.pop_many("raw", 10)
    assert [m.value for m in taken] == ["before", "café", "\ufffd\ufffd", "after"]
    assert all(isinstance(m.key, str) for m in taken)
