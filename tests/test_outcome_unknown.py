"""503 or 504: a failed write tells the client whether it may have been stored.

503 (with Retry-After): nothing reached Redis, a retry is safe. 504 (no Retry-After):
the write was sent and its answer was lost, so it may be stored; check before retrying.
"""

from __future__ import annotations

import threading
import time
import xmlrpc.client

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.engine.queues import QueueEngine
from restmq.errors import OutcomeUnknown, StorageUnavailable
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from tests.support import wait_for


@pytest.fixture
def external(broker_factory, valkey_factory):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port), "--redis-timeout", "0.5")
    return server, broker


@pytest.fixture
def engine(valkey_factory):
    server = valkey_factory()
    client = RedisClient(
        reactor, RedisAddress(host="127.0.0.1", port=server.port), poolsize=2, call_timeout=0.3
    )
    client.connect()
    pytest_twisted.blockon(defer.ensureDeferred(client.wait_until_ready()))
    yield server, QueueEngine(client)
    pytest_twisted.blockon(client.disconnect())


@pytest_twisted.ensureDeferred
async def test_a_late_write_is_outcome_unknown_and_a_late_read_is_not(engine):
    server, queue_engine = engine
    assert server.command("CLIENT", "PAUSE", "800", "WRITE") == "OK"
    with pytest.raises(OutcomeUnknown, match="check before retrying"):
        await queue_engine.add("late", "maybe")
    assert server.command("CLIENT", "PAUSE", "800", "ALL") == "OK"
    with pytest.raises(StorageUnavailable) as raised:
        await queue_engine.length("late")
    assert not isinstance(raised.value, OutcomeUnknown)
    # The write that was answered "unknown" did happen once Redis went on.
    for _ in range(100):
        if server.command("LLEN", "late:queue") == 1:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert server.command("LLEN", "late:queue") == 1


@pytest_twisted.ensureDeferred
async def test_large_writes_go_out_a_few_at_a_time_and_one_left_waiting_is_not_sent(engine):
    """Large commands share a byte limit at Redis; one that cannot go out within the
    call timeout is refused with nothing sent (503), never left "unknown"."""
    server, queue_engine = engine
    queue_engine.redis._gate.limit = 150_000  # room for one 100 KB add at a time
    assert server.command("CLIENT", "PAUSE", "1500", "WRITE") == "OK"
    first = defer.ensureDeferred(queue_engine.add("big", "a" * 100_000))
    second = defer.ensureDeferred(queue_engine.add("big", "b" * 100_000))
    with pytest.raises(StorageUnavailable) as waited:
        await second
    assert not isinstance(waited.value, OutcomeUnknown)
    assert "large writes" in str(waited.value) and "nothing was sent" in str(waited.value)
    with pytest.raises(OutcomeUnknown):  # it was sent: Redis stores it once unpaused
        await first
    await task.deferLater(reactor, 1.5, lambda: None)
    assert await queue_engine.length("big") == 1


@pytest_twisted.ensureDeferred
async def test_a_call_never_sent_is_a_plain_503_saying_nothing_was_sent(engine):
    _, queue_engine = engine
    await queue_engine.redis.disconnect()
    with pytest.raises(StorageUnavailable) as raised:
        await queue_engine.add("never", "x")
    assert not isinstance(raised.value, OutcomeUnknown)
    assert "nothing was sent" in str(raised.value)


def test_a_post_redis_answers_too_late_is_504_without_retry_after(external, queue):
    server, broker = external
    assert server.command("CLIENT", "PAUSE", "1500", "WRITE") == "OK"
    answer = broker.post(f"/q/{queue}", value="stored anyway")
    assert answer.status == 504
    assert answer.json()["error"].startswith("stored state unknown")
    assert "check before retrying" in answer.json()["error"]
    assert "retry-after" not in answer.headers
    # What the client is told to check: the message is there, once.
    wait_for(lambda: broker.get(f"/stats/{queue}").json().get("len") == 1, 10, what="the add")
    assert broker.get(f"/q/{queue}").json()["value"] == "stored anyway"


def test_a_post_whose_redis_connection_drops_after_sending_is_504(external, queue):
    server, broker = external
    broker.post(f"/q/{queue}", value="warm up")  # the pool is connected
    assert server.command("CLIENT", "PAUSE", "3000", "WRITE") == "OK"
    answers = []
    poster = threading.Thread(target=lambda: answers.append(broker.post(f"/q/{queue}", value="x")))
    poster.start()
    time.sleep(0.2)  # the add script is sent and held by the pause
    server.command("CLIENT", "KILL", "TYPE", "normal")  # every connection but this one
    poster.join(10)
    assert answers and answers[0].status == 504, answers
    assert "connection" in answers[0].json()["error"]
    assert "retry-after" not in answers[0].headers
    server.command("CLIENT", "UNPAUSE")


def test_a_pop_redis_answers_too_late_stays_a_503(external, queue):
    server, broker = external
    broker.post(f"/q/{queue}", value="kept")
    assert server.command("CLIENT", "PAUSE", "1500", "WRITE") == "OK"
    answer = broker.get(f"/q/{queue}")
    assert answer.status == 503  # its late reply is put back: a retry is safe
    assert answer.headers["retry-after"] == "1"


def test_xmlrpc_add_redis_answers_too_late_is_fault_504(external, queue):
    server, broker = external
    rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{broker.port}/xmlrpc")
    assert server.command("CLIENT", "PAUSE", "1500", "WRITE") == "OK"
    with pytest.raises(xmlrpc.client.Fault) as raised:
        rpc.add(queue, "maybe")
    assert raised.value.faultCode == 504
    assert "stored state unknown" in raised.value.faultString


def test_a_burst_of_large_writes_is_answered_truthfully(shared_broker, queue):
    """Forty 8 MiB adds at once, with the default limits: a 200 was stored, a 503 was
    not (nothing was sent to Redis), and only a 504 leaves the client not knowing."""
    value = "v" * (8 * 1024 * 1024 - 1024)
    body = ('{"value": "' + value + '"}').encode()
    answers = []

    def post():
        answers.append(
            shared_broker.request(
                "POST",
                f"/q/{queue}",
                body=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
        )

    clients = [threading.Thread(target=post) for _ in range(40)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()

    statuses = [answer.status for answer in answers]
    assert set(statuses) <= {200, 503, 504}, statuses
    for answer in answers:
        if answer.status == 503:
            error = answer.json()["error"]
            assert error.startswith("broker busy") or "nothing was sent" in error, error
            assert answer.headers.get("retry-after")
        if answer.status == 504:
            assert answer.json()["error"].startswith("stored state unknown")
            assert "retry-after" not in answer.headers
    stored = shared_broker.get(f"/stats/{queue}").json()["len"]
    assert statuses.count(200) <= stored <= statuses.count(200) + statuses.count(504)
    shared_broker.request("DELETE", f"/q/{queue}")
