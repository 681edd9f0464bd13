"""Streaming consumer counts of several brokers in one Redis: QueueEngine on a real Valkey,
then over the wire with brokers on a standalone Valkey and on a Valkey Cluster.

Each broker (each --workers process too) records its counts under its own id for a
short while; /stats/ adds up those of the others to its own, in the same script call.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from restmq.engine.queues import QueueEngine
from tests.support import HttpStream, WebSocketStream, storage_args, wait_for


@pytest.fixture
def engines(server, connect_client):
    """Three brokers' engines on the same Redis."""
    return [QueueEngine(connect_client(server, poolsize=10)) for _ in range(3)]


def _consumers(stats, name: str) -> int:
    return next(s.other_consumers for s in stats if s.name == name)


@pytest_twisted.ensureDeferred
async def test_each_broker_sees_the_sum_of_the_others(engines):
    a, b, c = engines
    await a.add("orders", "x")
    await a.add("mail", "y")
    await a.report_consumers({"orders": 2, "mail": 1}, 10_000)
    await b.report_consumers({"orders": 3}, 10_000)
    stats = await c.stats()
    assert (_consumers(stats, "orders"), _consumers(stats, "mail")) == (5, 1)
    assert await _length_and_consumers(c, "orders") == (1, 5)
    # a broker counts its own consumers itself, live: Redis gives it only the others'
    assert _consumers(await a.stats(), "orders") == 3
    assert await _length_and_consumers(b, "orders") == (1, 2)
    assert await _length_and_consumers(c, "nobody-here") == (0, 0)


@pytest_twisted.ensureDeferred
async def test_new_counts_replace_the_old_and_none_clear_them(engines, server):
    a, _, c = engines
    await a.add("orders", "x")
    await a.report_consumers({"orders": 2, "mail": 1}, 10_000)
    await a.report_consumers({"orders": 4}, 10_000)
    assert await _length_and_consumers(c, "orders") == (1, 4)
    assert await _length_and_consumers(c, "mail") == (0, 0)
    await a.report_consumers({}, 10_000)
    assert await _length_and_consumers(c, "orders") == (1, 0)
    assert server.command("KEYS", "restmq:*") == []


@pytest_twisted.ensureDeferred
async def test_counts_not_kept_alive_drop_out(engines, server):
    a, b, c = engines
    await a.add("orders", "x")
    await a.report_consumers({"orders": 2}, 300)
    await b.report_consumers({"orders": 1}, 60_000)
    assert await a.report_consumers({}, 300, refresh=True), "a refresh keeps them alive"
    await task.deferLater(reactor, 0.5, lambda: None)  # a died: it wrote nothing since
    assert await _length_and_consumers(c, "orders") == (1, 1)
    assert _consumers(await c.stats(), "orders") == 1
    assert not await a.report_consumers({}, 300, refresh=True), "gone: write them in full"
    await b.report_consumers({"orders": 1}, 60_000)  # the next write drops a from the index
    assert server.command("ZRANGE", "restmq:brokers", "0", "-1") == [b.broker_id]


@pytest_twisted.ensureDeferred
async def test_count_keys_are_apart_from_every_queue_key(engines, server):
    a, _, c = engines
    for name in ("restmq", "restmq:consumers", "restmq:brokers"):
        await a.add(name, "x")
    await a.report_consumers({"restmq:consumers": 7}, 10_000)
    keys = set(server.command("KEYS", "*"))
    assert keys >= {"restmq:brokers", f"restmq:consumers:{a.broker_id}"}
    assert a.broker_id.startswith("b") and a.broker_id[1:].isalnum()
    stats = {s.name: s for s in await c.stats()}
    assert {name: stats[name].length for name in stats} == {
        "restmq": 1,
        "restmq:consumers": 1,
        "restmq:brokers": 1,
    }
    assert stats["restmq:consumers"].other_consumers == 7
    assert [await c.pop(name) is not None for name in stats] == [True, True, True]


async def _length_and_consumers(engine, queue: str) -> tuple[int, int]:
    counts = await engine.queue_counts(queue)
    return counts.length, counts.consumers_elsewhere


# -- over the wire: two brokers on one store, each /stats/ counting every consumer ----------


@pytest.mark.parametrize("store", ["standalone", "cluster"])
def test_stats_of_every_broker_count_the_consumers_of_all(
    store, request, broker_factory, valkey_factory, queue
):
    """On a standalone Valkey and on a Valkey Cluster: the one-queue and the all-queues
    ``/stats/`` of each broker add the other broker's streaming consumers to its own."""
    if store == "cluster":
        args = storage_args("cluster", request)
    else:
        args = ("--redis-port", str(valkey_factory().port))
    a, b = broker_factory(*args), broker_factory(*args)
    assert a.post(f"/q/{queue}", value="listed").status == 200  # /stats/ lists it from now
    on_a = [HttpStream(a.port, queue, sse=True).start() for _ in range(2)]
    on_b = WebSocketStream(b.port, queue).start()

    def everywhere(count: int) -> bool:
        return all(
            broker.get(f"/stats/{queue}").json()["consumers"] == count
            and broker.get("/stats/").json()["queues"][queue]["consumers"] == count
            for broker in (a, b)
        )

    wait_for(lambda: everywhere(3), 10, what="three consumers counted on both brokers")
    for stream in on_a:
        stream.close()
    wait_for(lambda: everywhere(1), 10, what="one consumer counted on both brokers")
    on_b.close()
    wait_for(lambda: everywhere(0), 10, what="no consumer counted on either broker")
