"""--redis-wait-replicas: adds and acks answer once enough replicas have them (Redis WAIT).

A real master with one real replica; in process (pytest-twisted) for the engine rules,
and one `twistd restmq` for what an HTTP client sees.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from restmq.engine.queues import QueueEngine
from restmq.errors import OutcomeUnknown, StorageUnavailable
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from tests.support import ValkeyNode, wait_for


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("replicated")
    master = ValkeyNode(workdir / "master").start()
    replica = ValkeyNode(workdir / "replica", ["--replicaof", "127.0.0.1", str(master.port)])
    try:
        replica.start()
        wait_for(replica.replica_in_sync, 15, what="the replica to sync")
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def connect(master: ValkeyNode, wait_replicas: int, timeout: float = 1.0) -> RedisClient:
    client = RedisClient(
        reactor,
        RedisAddress(host="127.0.0.1", port=master.port),
        poolsize=2,
        call_timeout=timeout,
        wait_replicas=wait_replicas,
    )
    client.connect()
    pytest_twisted.blockon(defer.ensureDeferred(client.wait_until_ready()))
    return client


@pytest.fixture
def durable(servers):
    """An engine whose adds and acks wait for the one replica."""
    client = connect(servers[0], wait_replicas=1)
    yield QueueEngine(client)
    pytest_twisted.blockon(client.disconnect())


@pytest.fixture
def too_demanding(servers):
    """An engine that wants two replicas where there is one (and waits 0.3 s for them)."""
    client = connect(servers[0], wait_replicas=2, timeout=0.3)
    yield QueueEngine(client)
    pytest_twisted.blockon(client.disconnect())


@pytest_twisted.ensureDeferred
async def test_an_add_answers_once_the_replica_has_it(durable, servers, queue):
    _, replica = servers
    for n in range(20):
        key = await durable.add(queue, f"body {n}")
        # read at once, with no waiting: WAIT already saw the replica apply it
        assert replica.command("GET", key) == f"body {n}"
    keys = await durable.add_many(queue, ["a", "b", "c"])
    assert [replica.command("GET", key) for key in keys] == ["a", "b", "c"]


@pytest_twisted.ensureDeferred
async def test_an_ack_answers_once_the_replica_deleted_the_message(durable, servers, queue):
    _, replica = servers
    key = await durable.add(queue, "work")
    [leased] = await durable.lease(queue, 30)
    results = await durable.ack(queue, leased.receipt)
    assert [r.done for r in results] == [True]
    assert replica.command("EXISTS", key) == 0
    assert replica.command("ZCARD", f"{queue}:leased") == 0


@pytest_twisted.ensureDeferred
async def test_too_few_replicas_leaves_the_outcome_unknown(too_demanding, servers, queue):
    master, _ = servers
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as caught:
        await too_demanding.add(queue, "maybe")
    took = time.monotonic() - started
    assert str(caught.value).startswith("stored state unknown: not replicated: 1 of 2 replica")
    assert 0.25 < took < 1.0, "WAIT gives up after the Redis timeout, not before, not forever"
    # the write happened on the master: that is why a blind retry would store it twice
    assert master.command("LLEN", f"{queue}:queue") == 1


@pytest_twisted.ensureDeferred
async def test_takes_and_reads_do_not_wait_for_replicas(too_demanding, servers, queue):
    master, _ = servers
    master.command("LPUSH", f"{queue}:queue", f"{queue}:1")
    master.command("SET", f"{queue}:1", "quick")
    started = time.monotonic()
    message = await too_demanding.pop(queue)
    assert await too_demanding.length(queue) == 0
    assert message.value == "quick"
    assert time.monotonic() - started < 0.25


@pytest_twisted.ensureDeferred
async def test_a_script_the_server_lost_is_loaded_and_still_waited_for(durable, servers, queue):
    master, replica = servers
    assert master.command("SCRIPT", "FLUSH") == "OK"
    key = await durable.add(queue, "after a flush")
    assert replica.command("GET", key) == "after a flush"
    assert master.command("LLEN", f"{queue}:queue") == 1


@pytest_twisted.ensureDeferred
async def test_a_master_refusing_writes_for_want_of_replicas_is_503(durable, servers, queue):
    master, _ = servers
    assert master.command("CONFIG", "SET", "min-replicas-to-write", "2") == "OK"
    try:
        with pytest.raises(StorageUnavailable) as caught:
            await durable.add(queue, "refused")
    finally:
        master.command("CONFIG", "SET", "min-replicas-to-write", "0")
    assert not isinstance(caught.value, OutcomeUnknown), "refused before writing: nothing stored"
    assert "fewer replicas than its min-replicas-to-write" in str(caught.value)
    assert master.command("LLEN", f"{queue}:queue") == 0


def test_an_http_add_not_replicated_in_time_is_504_without_retry_after(
    servers, broker_factory, queue
):
    master, _ = servers
    broker = broker_factory(
        "--redis-port", str(master.port), "--redis-wait-replicas", "2", "--redis-timeout", "0.3"
    )
    answer = broker.post(f"/q/{queue}", value="maybe")
    assert answer.status == 504
    assert answer.json()["error"].startswith("stored state unknown: not replicated")
    assert "retry-after" not in answer.headers
    # the message is there: a consumer gets it
    taken = broker.get(f"/q/{queue}")
    assert taken.status == 200 and taken.json()["value"] == "maybe"


def wait_calls(server: ValkeyNode) -> int:
    stats = server.command("INFO", "commandstats")
    line = next((row for row in stats.splitlines() if row.startswith("cmdstat_wait:")), "")
    return int(line.split("calls=")[1].split(",")[0]) if line else 0


@pytest_twisted.ensureDeferred
async def test_adds_sent_together_share_one_wait(durable, servers, queue):
    master, replica = servers
    before = wait_calls(master)
    keys = await defer.gatherResults(
        [defer.ensureDeferred(durable.add(queue, f"m{n}")) for n in range(30)]
    )
    # one WAIT per connection that carried some of them (the pool has two), not 30
    assert 1 <= wait_calls(master) - before <= 2
    assert [replica.command("GET", key) for key in keys] == [f"m{n}" for n in range(30)]
