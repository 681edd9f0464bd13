"""Durable subscriptions in the engine, in process against a real Valkey (and the
session's Valkey Cluster): the subscription set, and the add script's fan-out for plain,
batch, delayed and idempotent adds."""

from __future__ import annotations

import pytest_twisted

from restmq.engine import keys
from tests.support import cluster_command, cluster_owner


@pytest_twisted.ensureDeferred
async def test_subscribe_answers_whether_it_was_new_and_lists_sorted(engine, server):
    assert await engine.subscriptions("news") == []
    assert await engine.subscribe("news", "web") is True
    assert await engine.subscribe("news", "billing") is True
    assert await engine.subscribe("news", "web") is False
    assert await engine.subscriptions("news") == ["billing", "web"]
    assert sorted(server.command("SMEMBERS", "news:subscriptions")) == ["billing", "web"]
    assert await engine.unsubscribe("news", "web") is True
    assert await engine.unsubscribe("news", "web") is False
    assert await engine.subscriptions("news") == ["billing"]


@pytest_twisted.ensureDeferred
async def test_adds_go_to_every_subscription_and_not_to_the_queue(engine, server):
    await engine.subscribe("orders", "billing")
    await engine.subscribe("orders", "audit")
    first = await engine.add("orders", "one")
    batch = await engine.add_many("orders", ["two", "three"])
    # The keys answered are numbered by the topic's counter, as for any add.
    assert [first, *batch] == ["orders:1", "orders:2", "orders:3"]
    assert server.command("LLEN", "orders:queue") == 0
    assert server.command("EXISTS", "orders:1", "orders:2", "orders:3") == 0
    for name in ("billing", "audit"):
        taken = await engine.pop_many(f"orders:{name}", 10)
        assert [m.value for m in taken] == ["one", "two", "three"]
        assert [m.key for m in taken] == [f"orders:{name}:{n}" for n in (1, 2, 3)]


@pytest_twisted.ensureDeferred
async def test_after_unsubscribing_the_queue_keeps_its_messages_and_gets_no_more(engine, server):
    await engine.subscribe("feed", "a")
    await engine.add("feed", "shared")
    assert await engine.unsubscribe("feed", "a")
    await engine.add("feed", "after")
    assert [m.value for m in await engine.pop_many("feed:a", 10)] == ["shared"]
    assert [m.value for m in await engine.pop_many("feed", 10)] == ["after"]


@pytest_twisted.ensureDeferred
async def test_delayed_adds_wait_in_each_subscriptions_delayed_set(engine, server):
    await engine.subscribe("later", "x")
    await engine.subscribe("later", "y")
    await engine.add_many("later", ["a", "b"], delay=1)
    for name in ("x", "y"):
        assert server.command("ZCARD", f"later:{name}:delayed") == 2
        assert server.command("LLEN", f"later:{name}:queue") == 0
    assert server.command("EXISTS", "later:delayed", "later:queue") == 0


@pytest_twisted.ensureDeferred
async def test_an_idempotent_add_replayed_stores_one_copy_per_subscription(engine, server):
    await engine.subscribe("pay", "ledger")
    await engine.subscribe("pay", "mail")
    first = await engine.add_many("pay", ["charge 5"], idempotency_key="k-1")
    again = await engine.add_many("pay", ["charge 5"], idempotency_key="k-1")
    assert list(again) == list(first) and again.replayed and not first.replayed
    for name in ("ledger", "mail"):
        taken = await engine.pop_many(f"pay:{name}", 10)
        assert [m.value for m in taken] == ["charge 5"]


@pytest_twisted.ensureDeferred
async def test_on_a_cluster_a_queues_subscriptions_share_its_slot(
    valkey_cluster, cluster_engine, queue
):
    await cluster_engine.subscribe(queue, "s1")
    await cluster_engine.add_many(queue, ["m1", "m2"], delay=60)  # not due during the test
    await cluster_engine.add_many(queue, ["m3"])
    assert await cluster_engine.subscriptions(queue) == ["s1"]
    taken = await cluster_engine.pop_many(f"{queue}:s1", 10)
    assert [m.value for m in taken] == ["m3"]
    assert [m.key for m in taken] == [f"{{{queue}}}:s1:3"]
    assert await cluster_engine.pop_many(queue, 10) == []
    subscriptions = keys.subscriptions_key(keys.CLUSTER.stem(queue))
    assert subscriptions == f"{{{queue}}}:subscriptions"
    owner = cluster_owner(valkey_cluster, subscriptions)
    assert cluster_command(owner, "SMEMBERS", subscriptions) == ["s1"]
    assert cluster_command(owner, "ZCARD", f"{{{queue}}}:s1:delayed") == 2
    assert owner is cluster_owner(valkey_cluster, f"{{{queue}}}:s1:queue")
