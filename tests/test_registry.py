"""ConsumerRegistry in process on a real Valkey: messages for a consumer that has gone."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from restmq.delivery.consumers import ConsumerRegistry, StreamConsumer


class InMemoryConsumer(StreamConsumer):
    """A consumer whose connection is a list: what it was sent, in order."""

    kind = "memory"

    def __init__(self, queue: str) -> None:
        super().__init__(queue, "in-memory")
        self.received: list[bytes] = []

    def encode(self, message) -> bytes:
        return message.value.encode()

    def write(self, data: bytes) -> None:
        self.received.append(data)

    def close(self, reason: str) -> None:
        self.gone = True

    def abort(self) -> None:
        self.gone = True


async def settle(seconds: float = 0.2) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_for_line(lines: list[str], line: str, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while line not in lines:
        assert reactor.seconds() < deadline, f"no log line {line!r} in {timeout} s: {lines}"
        await settle(0.02)


# A broadcast batch takes what is waiting; a roundrobin one, a message per ready consumer.
@pytest.mark.parametrize("policy, taken", [("broadcast", 3), ("roundrobin", 1)])
@pytest_twisted.ensureDeferred
async def test_messages_taken_for_a_consumer_that_left_go_back_to_the_head(
    engine, policy, taken, log_lines
):
    await engine.set_policy("jobs", policy)
    keys = await engine.add_many("jobs", ["first", "second", "third"])
    registry = ConsumerRegistry(engine, reactor)
    consumer = InMemoryConsumer("jobs")
    registry.add(consumer)  # wakes the queue: a batch is being taken from Redis now
    consumer.gone = True  # ...and the connection drops before it is handed out
    # The batch really was taken, found nobody to hand it to, and was put back.
    await wait_for_line(log_lines, f"put {taken} undelivered message(s) back on queue jobs")
    assert consumer.received == []
    back = await engine.pop_many("jobs", 10)
    assert [m.key for m in back] == keys
    assert [m.value for m in back] == ["first", "second", "third"]
    assert await engine.length("jobs") == 0


@pytest_twisted.ensureDeferred
async def test_roundrobin_skips_a_consumer_that_left_and_rotates(engine):
    await engine.set_policy("rr", "roundrobin")
    registry = ConsumerRegistry(engine, reactor)
    a, b, c = InMemoryConsumer("rr"), InMemoryConsumer("rr"), InMemoryConsumer("rr")
    for consumer in (a, b, c):
        registry.add(consumer)
    await settle()
    await engine.add_many("rr", [str(i) for i in range(6)])
    registry.wake("rr")
    await settle()
    assert sorted(a.received + b.received + c.received) == [str(i).encode() for i in range(6)]
    assert [len(x.received) for x in (a, b, c)] == [2, 2, 2]
    b.gone = True  # b's connection is gone but the registry has not heard yet
    await engine.add_many("rr", [str(i) for i in range(6, 12)])
    registry.wake("rr")
    await settle()
    assert len(b.received) == 2
    assert len(a.received) + len(c.received) == 10
    assert await engine.length("rr") == 0


@pytest_twisted.ensureDeferred
async def test_purge_notice_ends_local_streams(engine):
    registry = ConsumerRegistry(engine, reactor)
    consumer = InMemoryConsumer("p")
    registry.add(consumer)
    registry.on_notice(engine.channel("p"), "purge")
    assert consumer.gone
    assert registry.count("p") == 0 and registry.total == 0
