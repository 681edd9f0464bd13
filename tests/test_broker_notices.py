"""What brokers sharing one Redis publish to each other, heard on a real Valkey."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.delivery.consumers import ConsumerRegistry
from restmq.engine import notices
from restmq.storage.address import RedisAddress
from restmq.storage.notify import Notifications
from tests.support import MemoryConsumer


@pytest.fixture
def heard(server, engine):
    """Every message published on queue ``q``'s channel, as another broker hears it."""
    messages: list[str] = []
    listener = Notifications(
        reactor,
        RedisAddress(host="127.0.0.1", port=server.port),
        lambda channel, message: messages.append(message),
    )
    listener.start()
    pytest_twisted.blockon(defer.ensureDeferred(subscribed(listener, engine.channel("q"))))
    yield messages
    pytest_twisted.blockon(listener.stop())


async def subscribed(listener: Notifications, channel: str) -> None:
    """Return once the server has confirmed the subscription."""
    listener.subscribe(channel)  # remembered; sent once the connection is up
    await until(lambda: listener.is_subscribed(channel))
    await listener.subscribe(channel)  # now online: fires on the server's confirmation


async def settle(seconds: float = 0.1) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await settle(0.02)
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_each_operation_publishes_its_notice_word(engine, heard):
    await engine.add("q", "v")
    await engine.set_policy("q", "roundrobin")
    await engine.set_status("q", started=False)
    await engine.set_status("q", started=True)
    taken = await engine.pop_many("q", 1)
    await engine.requeue("q", taken)
    await engine.purge("q")
    words = [notices.ADD, notices.POLICY, notices.STOP, notices.START, notices.ADD, notices.PURGE]
    await until(lambda: len(heard) >= len(words))
    assert heard == words


@pytest_twisted.ensureDeferred
async def test_a_broadcast_batch_carries_its_version_origin_and_messages(engine, heard):
    await engine.add_many("q", ["a", "b"])
    await engine.take_for_streams("q", roundrobin_batch=1, broadcast_batch=10, origin="me")
    await until(lambda: any(notices.is_batch(m) for m in heard))
    published = next(m for m in heard if notices.is_batch(m))
    assert json.loads(published) == {"v": 1, "o": "me", "m": ["q:1", "a", "q:2", "b"]}
    batch = notices.decode_batch(published)
    assert batch == notices.Batch("me", [("q:1", "a"), ("q:2", "b")], notices.BATCH_VERSION)


def test_a_batch_from_an_older_broker_has_no_version_and_reads_as_version_1():
    batch = notices.decode_batch('{"o": "old", "m": ["q:1", "a"]}')
    assert batch == notices.Batch("old", [("q:1", "a")], 1)


@pytest.mark.parametrize(
    "text",
    ['{"v": 2, "o": "new", "m": []}', '{"v": "1", "o": "x", "m": []}', '{"o": "x"}', "{oops"],
)
def test_unreadable_batches_are_refused(text):
    with pytest.raises(notices.UnreadableBatch):
        notices.decode_batch(text)


@pytest_twisted.ensureDeferred
async def test_the_registry_delivers_old_and_current_batches_and_skips_newer_ones(
    engine, log_lines
):
    registry = ConsumerRegistry(engine, reactor)
    consumer = MemoryConsumer("q")
    registry.add(consumer)
    channel = engine.channel("q")
    registry.on_notice(channel, '{"o": "older-broker", "m": ["q:1", "from-old"]}')
    registry.on_notice(channel, notices.encode_batch("other", [("q:2", "from-current")]))
    registry.on_notice(channel, '{"v": 2, "o": "future", "m": ["q:3", "from-future"]}')
    registry.on_notice(channel, notices.encode_batch(registry.origin, [("q:4", "own")]))
    assert consumer.values == ["from-old", "from-current"]
    assert any("batch version 2 is newer than 1" in line for line in log_lines)
    registry.on_notice(channel, notices.PURGE)
    assert consumer.gone
