"""The operations layer in process, over a real Valkey: validation once, typed results, errors."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet import reactor

from restmq.delivery.consumers import ConsumerRegistry
from restmq.errors import EmptyQueue, InvalidArgument, InvalidStatus, TooManyConsumers
from restmq.operations import validation
from restmq.operations.queue_operations import Operations
from restmq.operations.results import Added, AllStats, Deleted, OneStats, Policy, Purged, Status
from tests.support import MemoryConsumer


@pytest.fixture
def ops(engine):
    registry = ConsumerRegistry(engine, reactor, max_consumers=2)
    return Operations(engine, registry, lambda: "test storage")


@pytest_twisted.ensureDeferred
async def test_add_returns_keys_and_stores_ttl_given_as_text(ops, server):
    added = await ops.add("jobs", "first", "30")
    assert added == Added("jobs", ["jobs:1"]) and added.key == "jobs:1"
    assert 0 < server.command("TTL", "jobs:1") <= 30
    many = await ops.add_many("jobs", ["a", "b"], 5)
    assert many.keys == ["jobs:2", "jobs:3"]
    assert server.command("LLEN", "jobs:queue") == 3


@pytest.mark.parametrize(
    ("queue", "values", "ttl", "error"),
    [
        (".", ["v"], None, "invalid queue name '.'"),
        ("..", ["v"], None, "invalid queue name '..'"),
        ("bad name", ["v"], None, "invalid queue name"),
        ("q", ["v"], "-1", "ttl must be"),
        ("q", ["v"], "soon", "ttl must be"),
        ("q", [], None, "no message to add"),
        ("q", [3], None, "a message value must be text"),
        ("q", ["v"] * (validation.MAX_BATCH + 1), None, "at most"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_add_refuses_bad_arguments_and_stores_nothing(ops, server, queue, values, ttl, error):
    with pytest.raises(InvalidArgument, match=r"^" + re.escape(error)):
        await ops.add_many(queue, values, ttl)
    assert server.command("DBSIZE") == 0


@pytest_twisted.ensureDeferred
async def test_pop_takes_the_oldest_and_an_empty_queue_is_an_error(ops, server):
    await ops.add_many("q", ["one", "two"])
    message = await ops.pop("q")
    assert (message.key, message.value, message.count) == ("q:1", "one", 0)
    assert server.command("EXISTS", "q:1") == 0, "a pop deletes the body"
    await ops.pop("q")
    with pytest.raises(EmptyQueue) as empty:
        await ops.pop("q")
    assert str(empty.value) == "queue 'q' is empty" and empty.value.queue == "q"


@pytest_twisted.ensureDeferred
async def test_pop_many_validates_n_once_and_returns_a_list(ops):
    await ops.add_many("q", ["a", "b", "c"])
    with pytest.raises(InvalidArgument, match="n must be a whole number"):
        await ops.pop_many("q", "0")
    assert [m.value for m in await ops.pop_many("q", "2")] == ["a", "b"]
    assert [m.value for m in await ops.pop_many("q", 10)] == ["c"]
    assert await ops.pop_many("q", 10) == []


@pytest_twisted.ensureDeferred
async def test_peek_leaves_the_message_and_counts(ops):
    await ops.add("q", "look")
    assert (await ops.peek("q")).count == 1
    assert (await ops.peek("q")).count == 2
    assert (await ops.pop("q")).value == "look"
    with pytest.raises(EmptyQueue):
        await ops.peek("q")


@pytest_twisted.ensureDeferred
async def test_delete_needs_a_key_of_the_queue(ops):
    added = await ops.add("q", "v")
    for key in (None, "", 5):
        with pytest.raises(InvalidArgument, match="the key of a message is required"):
            await ops.delete("q", key)
    with pytest.raises(InvalidArgument, match="is not a message key of queue 'q'"):
        await ops.delete("q", "other:1")
    assert await ops.delete("q", added.key) == Deleted("q", "q:1", True)
    assert await ops.delete("q", added.key) == Deleted("q", "q:1", False)


@pytest_twisted.ensureDeferred
async def test_purge_counts_what_was_pending(ops):
    await ops.add_many("q", ["a", "b"])
    assert await ops.purge("q") == Purged("q", 2)
    assert await ops.purge("q") == Purged("q", 0)


@pytest_twisted.ensureDeferred
async def test_policy_words(ops, server):
    assert await ops.policy("q") == Policy("q", "broadcast", 0)
    for missing in (None, ""):
        with pytest.raises(InvalidArgument, match=r"^policy is required"):
            await ops.set_policy("q", missing)
    with pytest.raises(InvalidArgument, match=r"^invalid policy 'fifo'"):
        await ops.set_policy("q", "fifo")
    assert server.command("EXISTS", "q:queuepolicy") == 0
    assert await ops.set_policy("q", "roundrobin") == Policy("q", "roundrobin")
    assert await ops.policy("q") == Policy("q", "roundrobin", 0)


@pytest_twisted.ensureDeferred
async def test_status_words_start_and_stop_only(ops, server):
    for word in ("pause", None, 1):
        with pytest.raises(InvalidStatus) as invalid:
            await ops.set_status("q", word)
        assert invalid.value.word == word and str(invalid.value) == f"invalid status: {word}"
    assert server.command("EXISTS", "queuestat::q") == 0
    with pytest.raises(InvalidArgument, match="invalid queue name"):
        await ops.set_status("bad name", "pause")  # the queue is checked first
    assert await ops.set_status("q", "stop") == Status("q", 0)
    assert await ops.status("q") == Status("q", 0)
    assert await ops.set_status("q", "start") == Status("q", 1)


@pytest_twisted.ensureDeferred
async def test_stats_count_this_brokers_stream_consumers(ops):
    await ops.add_many("full", ["a", "b", "c"])
    await ops.set_policy("full", "roundrobin")
    consumer = MemoryConsumer("watched")
    ops.open_stream(consumer)
    everything = await ops.all_stats()
    assert isinstance(everything, AllStats) and everything.storage == "test storage"
    assert [(r.stats.name, r.stats.length, r.stats.policy) for r in everything.queues] == [
        ("full", 3, "roundrobin")
    ]
    assert await ops.stats("watched") == OneStats("test storage", "watched", 0, 1)
    ops.close_stream(consumer)
    assert (await ops.stats("watched")).consumers == 0
    assert consumer.received == []  # its queue stayed empty


@pytest_twisted.ensureDeferred
async def test_open_stream_checks_the_name_and_the_consumer_limit(ops):
    with pytest.raises(InvalidArgument, match=re.escape("invalid queue name '..'")):
        ops.open_stream(MemoryConsumer(".."))
    ops.open_stream(MemoryConsumer("a"))
    ops.open_stream(MemoryConsumer("b"))
    with pytest.raises(TooManyConsumers, match="--max-consumers"):
        ops.open_stream(MemoryConsumer("c"))


@pytest_twisted.ensureDeferred
async def test_info_and_queue_listing(ops):
    await ops.add_many("b", [str(i) for i in range(12)])
    await ops.add("a", "x")
    assert await ops.queues() == ["a", "b"]
    info = await ops.info("b", newest=10)
    assert info.last_number == 12 and info.stats.length == 12
    assert info.newest_keys[0] == "b:12" and len(info.newest_keys) == 10
    assert await ops.length("b") == 12


# -- leases and settings: what the operations refuse (the engine checks nothing again) --


@pytest_twisted.ensureDeferred
async def test_lease_arguments_are_checked(ops, server):
    await ops.add("q", "job")
    for seconds in (0, -1, 43201, "soon", True):
        with pytest.raises(InvalidArgument, match="lease"):
            await ops.lease("q", seconds)
    with pytest.raises(InvalidArgument, match="n must"):
        await ops.lease("q", 30, n=0)
    with pytest.raises(InvalidArgument, match="queue name"):
        await ops.lease("bad name", 30)
    assert server.command("EXISTS", "q:leased") == 0, "nothing was leased"


@pytest_twisted.ensureDeferred
async def test_malformed_and_foreign_receipts_are_refused(ops, server):
    await ops.add("q", "job")
    await ops.add("other", "job")
    [message] = await ops.lease("q", 30)
    [foreign] = await ops.lease("other", 30)
    consumer = MemoryConsumer("q")
    for receipt in ("nonsense", "q:1", "q:1@", "q:1@x", "q:1@-1", "@1", "q:x@1", "q:dead:1@1"):
        with pytest.raises(InvalidArgument, match="not a receipt of queue 'q'"):
            await ops.ack("q", [receipt])
        with pytest.raises(InvalidArgument, match="not a receipt of queue 'q'"):
            await ops.ack_one("q", receipt)
        with pytest.raises(InvalidArgument, match="not a receipt of queue 'q'"):
            await ops.release("q", receipt)
        with pytest.raises(InvalidArgument, match="not a receipt of queue 'q'"):
            await ops.change_lease("q", receipt, 30)
        for ack in (True, False):
            with pytest.raises(InvalidArgument, match="not a receipt of queue 'q'"):
                await ops.settle_stream(consumer, receipt, ack)
    assert consumer.received == []  # the stream was never opened: nothing was sent to it
    with pytest.raises(InvalidArgument, match="not a receipt of queue 'q'"):
        await ops.ack("q", [message.receipt, foreign.receipt])
    with pytest.raises(InvalidArgument, match=r"^a receipt is required$"):
        await ops.ack("q", [])
    with pytest.raises(InvalidArgument, match=r"^a receipt is text"):
        await ops.ack("q", message.receipt)
    with pytest.raises(InvalidArgument, match=f"^at most {validation.MAX_BATCH} receipts"):
        await ops.ack("q", [message.receipt] * (validation.MAX_BATCH + 1))
    for missing in (None, "", 5):
        with pytest.raises(InvalidArgument, match=r"^a receipt is required, such as q:5@1"):
            await ops.release("q", missing)
    # nothing was acked, released or extended by the refused calls
    assert server.command("ZCARD", "q:leased") == 1
    assert server.command("ZCARD", "other:leased") == 1
    assert float(server.command("ZSCORE", "q:leased", "q:1")) == message.deadline_ms


@pytest_twisted.ensureDeferred
async def test_a_bare_number_is_no_message_key_of_a_dead_letter_queue(ops, server):
    # ":dead" strips to the empty name, whose keys would be ":<n>", never "<n>"
    server.command("SET", "5", "not a message")
    for queue in (":dead", ":dead:dead"):
        with pytest.raises(InvalidArgument, match="not a message key"):
            await ops.delete(queue, "5")
        with pytest.raises(InvalidArgument, match="not a receipt"):
            await ops.ack(queue, ["5@1"])
    assert server.command("GET", "5") == "not a message"


@pytest_twisted.ensureDeferred
async def test_dead_letters_hold_their_queues_keys_and_not_the_other_way(ops):
    with pytest.raises(InvalidArgument, match="'q:dead:1' is not a message key of queue 'q'"):
        await ops.delete("q", "q:dead:1")
    assert await ops.delete("q:dead", "q:2") == Deleted("q:dead", "q:2", False)


@pytest_twisted.ensureDeferred
async def test_change_lease_checks_the_receipt_the_seconds_then_its_form(ops, server):
    await ops.add("q", "job")
    [message] = await ops.lease("q", 30)
    for seconds in (-1, 43201, "x"):
        with pytest.raises(InvalidArgument, match=r"^lease must be"):
            await ops.change_lease("q", message.receipt, seconds)
    with pytest.raises(InvalidArgument, match=r"^lease is required with a receipt"):
        await ops.change_lease("q", "nonsense", None)
    with pytest.raises(InvalidArgument, match=r"^a receipt is required, such as q:5@1"):
        await ops.change_lease("q", "", "x")
    assert float(server.command("ZSCORE", "q:leased", "q:1")) == message.deadline_ms


@pytest_twisted.ensureDeferred
async def test_max_deliveries_is_checked(ops, server):
    for value in (-1, 1001, "many", 2.5, True):
        with pytest.raises(InvalidArgument, match="max_deliveries"):
            await ops.set_max_deliveries("q", value)
        with pytest.raises(InvalidArgument, match="max_deliveries"):
            await ops.configure("q", "roundrobin", value)
    assert server.command("EXISTS", "q:maxdeliveries", "q:queuepolicy") == 0
    assert await ops.set_max_deliveries("q", "1000") == 1000
    assert await ops.set_max_deliveries("q", 0) == 0
    assert (await ops.policy("q")).max_deliveries == 0
    assert server.command("EXISTS", "q:maxdeliveries") == 0, "0 means no limit: no key"


@pytest_twisted.ensureDeferred
async def test_configure_checks_both_before_setting_either(ops, server):
    with pytest.raises(InvalidArgument, match=r"^invalid policy 'fifo'"):
        await ops.configure("q", "fifo", "3")
    with pytest.raises(InvalidArgument, match=r"^invalid policy ''"):
        await ops.configure("q", "", "3")
    for missing in (None, ""):
        with pytest.raises(InvalidArgument, match=r"^policy is required"):
            await ops.configure("q", missing, None)
    with pytest.raises(InvalidArgument, match="invalid queue name"):
        await ops.configure("bad name", "fifo", "many")  # the queue is checked first
    assert server.command("DBSIZE") == 0
    await ops.configure("q", None, "3")
    assert await ops.policy("q") == Policy("q", "broadcast", 3)
    await ops.configure("q", "roundrobin", None)
    assert await ops.policy("q") == Policy("q", "roundrobin", 3)
    await ops.configure("q", "broadcast", "0")
    assert await ops.policy("q") == Policy("q", "broadcast", 0)


@pytest_twisted.ensureDeferred
async def test_max_length_is_checked_with_the_other_settings_before_any_is_set(ops, server):
    for value in (-1, 10**9 + 1, "many", 2.5, True):
        with pytest.raises(InvalidArgument, match=r"^max_length must be a whole number"):
            await ops.configure("q", "roundrobin", "3", value)
    with pytest.raises(InvalidArgument, match=r"^max_deliveries"):
        await ops.configure("q", None, "1001", "5")
    assert server.command("DBSIZE") == 0
    await ops.configure("q", None, None, str(10**9))
    assert await ops.policy("q") == Policy("q", "broadcast", 0, 10**9)
    await ops.configure("q", "roundrobin", None, 0)
    assert await ops.policy("q") == Policy("q", "roundrobin", 0, 0)
    assert server.command("EXISTS", "q:maxlength") == 0, "0 means no bound: no key"
