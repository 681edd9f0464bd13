"""restmq.client, the Python client: producing, popping, the broker's figures and settings,
and the errors a user sees, against a real broker."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from restmq.client import (
    AccessDenied,
    BadRequest,
    BrokerUnavailable,
    Client,
    NotLeased,
)
from tests.support import (
    STORAGE_MODES,
    Broker,
    broker_url,
    free_port,
    stem_of,
    storage_args,
    store_command,
    wait_for,
    wait_healthy,
)


@pytest.fixture
def client(shared_broker):
    with Client(broker_url(shared_broker)) as client:
        yield client


@STORAGE_MODES
def test_push_answers_the_key_and_pop_takes_the_message(client, shared_broker, queue):
    assert client.push(queue, "hello") == shared_broker.key(queue, 1)
    assert client.push(queue, {"id": 7}, ttl=60) == shared_broker.key(queue, 2)
    first = client.pop(queue)
    assert (first.queue, first.key, first.value, first.count) == (
        queue,
        shared_broker.key(queue, 1),
        "hello",
        0,
    )
    assert first.receipt is None and not first.leased
    assert json.loads(client.pop(queue).value) == {"id": 7}  # a non-str value as JSON text
    assert client.pop(queue) is None


@STORAGE_MODES
def test_push_many_adds_one_batch_and_pop_many_takes_it(client, shared_broker, queue):
    keys = client.push_many(queue, ["a", "b", "c"], ttl=60)
    assert keys == [shared_broker.key(queue, n) for n in (1, 2, 3)]
    taken = client.pop_many(queue, 2)
    assert [(m.key, m.value) for m in taken] == list(zip(keys[:2], ["a", "b"], strict=True))
    assert [m.value for m in client.pop_many(queue, 10)] == ["c"]
    assert client.pop_many(queue, 10) == []


@STORAGE_MODES
def test_each_push_carries_its_own_idempotency_key_the_broker_remembers(
    client, shared_broker, queue
):
    client.push(queue, "same")
    client.push(queue, "same")  # a new push, a new key: not a repeat of the first
    client.push_many(queue, ["a", "b"])
    # one remembered key per push: each was sent with a key, a new one each time
    stem = stem_of(shared_broker, queue)
    remembered = store_command(
        shared_broker, "KEYS", f"{stem}#idempotency:*", route=f"{stem}:queue"
    )
    assert len(remembered) == 3
    assert [m.value for m in client.pop_many(queue, 10)] == ["same", "same", "a", "b"]


@STORAGE_MODES
def test_a_pop_waits_for_a_message_that_is_pushed_meanwhile(client, queue):
    def push_later() -> None:
        with Client(client.url) as producer:
            producer.push(queue, "late")

    pusher = threading.Timer(0.3, push_later)
    started = time.monotonic()
    pusher.start()
    try:
        message = client.pop(queue, wait=60)
    finally:
        pusher.join()
    assert message is not None and message.value == "late"
    assert time.monotonic() - started < 30  # answered when it came, not after the wait


@STORAGE_MODES
def test_a_popped_message_has_no_lease_to_settle(client, queue):
    client.push(queue, "x")
    message = client.pop(queue)
    for settle in (message.ack, message.release, lambda: message.extend(30)):
        with pytest.raises(NotLeased, match="not taken under a lease"):
            settle()


@STORAGE_MODES
def test_arguments_beyond_the_protocols_limits_are_refused_before_sending(client, queue):
    with pytest.raises(ValueError, match="delay must be from 1 to 604800"):
        client.push(queue, "x", delay=604801)
    with pytest.raises(ValueError, match="delay"):
        client.push(queue, "x", delay=0)
    with pytest.raises(ValueError, match="n must be from 1 to 1000"):
        client.pop_many(queue, 1001)
    with pytest.raises(ValueError, match="lease must be from 1 to 43200"):
        client.lease(queue, 0)
    with pytest.raises(ValueError, match="wait must be from 0 to 60"):
        client.pop(queue, wait=61)
    with pytest.raises(ValueError, match="number of values"):
        client.push_many(queue, [])
    assert client.stats(queue)["len"] == 0  # nothing reached the broker


@STORAGE_MODES
def test_stats_purge_policy_and_start_stop(client, queue):
    client.push_many(queue, ["a", "b"])
    assert client.stats(queue)["len"] == 2
    assert client.stats()["queues"][queue]["len"] == 2
    assert client.policy(queue) == {"queue": queue, "value": "broadcast"}
    client.set_policy(queue, "roundrobin", max_deliveries=3)
    assert client.policy(queue) == {"queue": queue, "value": "roundrobin", "max_deliveries": 3}
    client.stop(queue)
    assert client.stats()["queues"][queue]["status"] == 0
    client.start(queue)
    assert client.stats()["queues"][queue]["status"] == 1
    assert client.purge(queue) is True
    assert client.purge(queue) is False
    assert client.stats(queue)["len"] == 0
    assert client.health()["status"] == "ok"


@STORAGE_MODES
def test_a_bad_queue_name_is_a_bad_request_with_the_brokers_words(client):
    with pytest.raises(BadRequest) as refused:
        client.push("no spaces", "x")
    assert refused.value.status == 400
    assert refused.value.error.startswith("invalid queue name 'no spaces'")
    assert "400" in str(refused.value) and "invalid queue name" in str(refused.value)


def test_an_unreachable_broker_is_broker_unavailable_after_the_retries(queue):
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=2, timeout=2) as client, pytest.raises(BrokerUnavailable) as gone:
        client.push(queue, "x")
    assert gone.value.status is None
    assert url in str(gone.value) and "tried 3 times" in str(gone.value)


GUARDED_ACL = """\
[rest:producer]
username = admin
password = s3cret

[rest:consumer]
username = admin
password = s3cret
"""


def test_an_acl_refusal_is_access_denied_and_credentials_pass(tmp_path, queue):
    (tmp_path / "acl.conf").write_text(GUARDED_ACL)
    broker = Broker(tmp_path).start(wait=False)
    try:
        wait_healthy(broker)
        url = broker_url(broker)
        with Client(url) as anonymous, pytest.raises(AccessDenied) as refused:
            anonymous.push(queue, "x")
        assert refused.value.status == 401
        assert "authentication required" in refused.value.error
        with Client(url, user="admin", password="nope") as wrong, pytest.raises(AccessDenied):
            wrong.stats()
        with Client(url, user="admin", password="s3cret") as admin:
            admin.push(queue, "x")
            assert admin.pop(queue).value == "x"
    finally:
        broker.stop()


@STORAGE_MODES
def test_a_push_while_the_broker_restarts_is_stored_once(
    broker_factory, storage, request, queue, caplog
):
    # on a cluster the broker process restarts; the cluster and what it holds stay
    broker = broker_factory(*storage_args(storage, request))
    broker.stop()
    caplog.set_level(logging.WARNING, logger="restmq.client")
    outcome: list = []

    def push() -> None:
        with Client(broker_url(broker), retries=100) as client:
            try:
                outcome.append(client.push(queue, "once"))
            except Exception as exc:  # handed to the test thread
                outcome.append(exc)

    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        # The push failed at least once against the stopped broker before it comes back.
        wait_for(
            lambda: any("retry 1 of 100" in r.getMessage() for r in caplog.records),
            what="the push's first retry",
        )
        broker.start()  # the same data directory, the same port
    finally:
        pusher.join(60)
    assert outcome == [broker.key(queue, 1)]
    with Client(broker_url(broker)) as client:
        assert client.stats(queue)["len"] == 1
        assert [m.value for m in client.pop_many(queue, 10)] == ["once"]
