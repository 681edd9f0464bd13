"""A plain pop first ends the queue's leases that ran out, as a leased take does.

In process on a real Valkey, with no sweeper running: only the pop can bring them back.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.engine.keys import LEASING
from restmq.engine.queues import QueueEngine
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient


@pytest.fixture
def engine(valkey_factory):
    server = valkey_factory()
    client = RedisClient(reactor, RedisAddress(host="127.0.0.1", port=server.port), poolsize=2)
    client.connect()
    pytest_twisted.blockon(defer.ensureDeferred(client.wait_until_ready()))
    yield QueueEngine(client)
    pytest_twisted.blockon(client.disconnect())


async def _past(engine: QueueEngine, deadline_ms: int) -> None:
    while True:
        seconds, micros = await engine.redis.execute("TIME")
        if int(seconds) * 1000 + int(micros) // 1000 > deadline_ms:
            return
        await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_plain_pop_takes_a_message_whose_lease_ran_out_first(engine):
    await engine.add_many("jobs", ["first", "second"])
    (held,) = await engine.lease("jobs", 1)
    await _past(engine, held.deadline_ms)
    popped = await engine.pop_many("jobs", 2)
    assert [(m.key, m.value) for m in popped] == [("jobs:1", "first"), ("jobs:2", "second")]
    assert await engine.redis.execute("EXISTS", "jobs:leased", "jobs:deliveries", "jobs:1") == 0
    assert await engine.redis.execute("ZSCORE", LEASING, "jobs") is None
    assert (await engine.ack("jobs", held.receipt))[0].done is False


@pytest_twisted.ensureDeferred
async def test_a_plain_pop_sends_a_message_out_of_deliveries_to_the_dead_letters(engine):
    await engine.set_max_deliveries("jobs", 1)
    await engine.add("jobs", "poison")
    (held,) = await engine.lease("jobs", 1)
    await _past(engine, held.deadline_ms)
    assert await engine.pop_many("jobs", 1) == []
    dead = await engine.pop("jobs:dead")
    assert (dead.key, dead.value) == ("jobs:1", "poison")
