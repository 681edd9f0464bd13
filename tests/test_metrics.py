"""GET /metrics: Prometheus counters move by exactly what clients did, gauges show the
queues and consumers, labels stay bounded, and acl.conf guards it like /stats/."""

from __future__ import annotations

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task

from restmq.delivery.consumers import ConsumerRegistry
from restmq.delivery.lease_sweeper import LeaseSweeper
from restmq.metrics import Metrics, Snapshot
from restmq.operations.queue_operations import Operations
from restmq.runtime.options import Options
from tests.support import (
    STORAGE_MODES,
    Broker,
    HttpStream,
    basic,
    start_broker,
    storage_args,
    wait_answering,
    wait_for,
)

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(broker: Broker) -> Samples:
    answer = broker.get("/metrics")
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


@pytest.fixture(scope="module")
def broker(tmp_path_factory, storage, request):
    """A broker of this module's own: its queue labels are not shared with other tests.
    On the cluster, whose queues other tests share and /metrics lists, the label bound is
    lifted, so that this module's queues are never counted as _other."""
    args = storage_args(storage, request)
    if args:
        args += ["--metrics-max-queues", "1000000"]
    started = Broker(tmp_path_factory.mktemp("metrics-broker"), args).start()
    yield started
    started.stop()


# -- counters over HTTP -----------------------------------------------------------


@STORAGE_MODES
def test_adds_and_pops_are_counted_per_queue(broker, queue):
    before = scrape(broker)
    for value_ in ("a", "b"):
        assert broker.post(f"/q/{queue}", value=value_).status == 200
    batch = broker.request(
        "POST",
        f"/q/{queue}",
        body='{"values": ["c"]}',
        headers={"Content-Type": "application/json"},
    )
    assert batch.status == 200
    assert broker.get(f"/q/{queue}").status == 200
    assert broker.get(f"/q/{queue}?n=5").json()[0]["value"] == "b"  # b and c: two more
    assert broker.get(f"/q/{queue}").status == 204  # empty: nothing taken
    after = scrape(broker)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("restmq_messages_added_total", queue=queue) == 3
    assert moved("restmq_messages_taken_total", queue=queue, how="pop") == 3
    assert moved("restmq_messages_taken_total", queue=queue, how="stream") == 0
    assert moved("restmq_messages_acked_total", queue=queue) == 0


@STORAGE_MODES
def test_requests_are_counted_by_route_pattern_never_the_path(broker, queue):
    before = scrape(broker)
    broker.post(f"/q/{queue}", value="x")
    broker.get(f"/q/{queue}")
    broker.get(f"/q/{queue}")  # 204: empty
    broker.get(f"/stats/{queue}")
    broker.get(f"/no/such/{queue}")
    after = scrape(broker)

    def moved(**labels: str) -> float:
        name = "restmq_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(route="/q/{queue}", method="POST", code="200") == 1
    assert moved(route="/q/{queue}", method="GET", code="200") == 1
    assert moved(route="/q/{queue}", method="GET", code="204") == 1
    assert moved(route="/stats/{queue}", method="GET", code="200") == 1
    assert moved(route="unmatched", method="GET", code="404") == 1
    routes = {labels["route"] for labels in series(after, "restmq_http_requests_total")}
    assert not any(queue in route for route in routes), routes


@STORAGE_MODES
def test_redis_calls_are_timed_by_command_or_script(broker, queue):
    before = scrape(broker)
    broker.post(f"/q/{queue}", value="x")
    after = scrape(broker)
    name = "restmq_redis_call_seconds_count"
    assert value(after, name, call="add") - value(before, name, call="add") >= 1
    buckets = [s for s in series(after, "restmq_redis_call_seconds_bucket") if s["call"] == "add"]
    assert {"+Inf", "0.001"} <= {b["le"] for b in buckets}


@STORAGE_MODES
def test_a_stream_delivery_is_counted_and_its_consumer_shown(broker, queue):
    stream = HttpStream(broker.port, queue, sse=True).start()
    try:
        wait_for(
            lambda: value(scrape(broker), "restmq_consumers", queue=queue, transport="sse") == 1,
            what="the SSE consumer in /metrics",
        )
        before = scrape(broker)
        broker.post(f"/q/{queue}", value="streamed")
        assert stream.next_message()["value"] == "streamed"
        after = scrape(broker)
        name = "restmq_messages_taken_total"
        assert (
            value(after, name, queue=queue, how="stream")
            - value(before, name, queue=queue, how="stream")
            == 1
        )
        assert value(after, name, queue=queue, how="pop") == 0
    finally:
        stream.close()
    wait_for(
        lambda: value(scrape(broker), "restmq_consumers", queue=queue, transport="sse") == 0,
        what="the consumer gone from /metrics",
    )


@STORAGE_MODES
def test_queue_length_gauge_and_storage_up(broker, queue):
    for n in range(4):
        broker.post(f"/q/{queue}", value=str(n))
    broker.get(f"/q/{queue}")
    samples = scrape(broker)
    assert value(samples, "restmq_queue_length", queue=queue) == 3
    assert value(samples, "restmq_storage_up") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples)


# -- bounds, storage, access ------------------------------------------------------


def test_queues_past_the_bound_are_counted_as_other(broker_factory, queue):
    bounded = broker_factory("--metrics-max-queues", "3")
    names = [f"{queue}-{n}" for n in range(5)]
    for name in names:
        assert bounded.post(f"/q/{name}", value="x").status == 200
    samples = scrape(bounded)
    added = {
        labels["queue"]: value(samples, "restmq_messages_added_total", **labels)
        for labels in series(samples, "restmq_messages_added_total")
    }
    assert added == {names[0]: 1, names[1]: 1, names[2]: 1, "_other": 2}
    lengths = {
        labels["queue"]: value(samples, "restmq_queue_length", **labels)
        for labels in series(samples, "restmq_queue_length")
    }
    assert lengths == {names[0]: 1, names[1]: 1, names[2]: 1, "_other": 2}


def test_storage_up_is_0_while_redis_is_down_and_1_once_back(broker_factory, valkey_factory):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port), "--redis-timeout", "0.5")
    assert value(scrape(broker), "restmq_storage_up") == 1
    server.stop()
    wait_for(lambda: value(scrape(broker), "restmq_storage_up") == 0, what="storage_up 0")
    samples = scrape(broker)
    assert series(samples, "restmq_queue_length") == []
    assert value(samples, "process_resident_memory_bytes") > 0, "the rest is still there"
    server.start()
    wait_for(lambda: value(scrape(broker), "restmq_storage_up") == 1, what="storage_up 1")


def test_acl_consumer_section_guards_metrics(tmp_path):
    acl = "[rest:consumer]\nusername = watcher\npassword = s3cret\n"
    guarded = start_broker(tmp_path / "guarded", acl)
    try:
        wait_answering(guarded)
        refused = guarded.get("/metrics")
        assert refused.status == 401
        assert "Basic" in refused.headers["www-authenticate"]
        assert "error" in refused.json()
        allowed = guarded.get("/metrics", headers=basic("watcher", "s3cret"))
        assert allowed.status == 200
        assert value(parse(allowed.text), "restmq_storage_up") == 1
    finally:
        guarded.stop()


def test_help_names_the_bound():
    text = str(Options())
    assert "--metrics-max-queues" in text
    assert "[default: 1000]" in text.split("--metrics-max-queues", 1)[1].split("--", 1)[0]


# -- leases, acks and expiry in process ---------------------------------------------


@pytest.fixture
def operations(engine):
    consumers = ConsumerRegistry(engine, reactor, metrics=Metrics())
    return Operations(engine, consumers, lambda: "test")


def counters(operations: Operations) -> Samples:
    return parse(operations.metrics.render(Snapshot(storage_up=True)).decode())


async def _run_out(operations: Operations, leased) -> None:
    """Return once Redis's clock (the one leases use) is past the leases' deadline."""
    while True:
        seconds, micros = await operations.engine.redis.execute("TIME")
        if int(seconds) * 1000 + int(micros) // 1000 > leased[0].deadline_ms:
            return
        await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_leased_take_and_its_ack_are_counted(operations):
    await operations.add_many("jobs", ["a", "b"])
    leased = await operations.lease("jobs", 30, n=2)
    await operations.ack("jobs", [leased[0].receipt, leased[0].receipt])  # settled once
    samples = counters(operations)
    assert value(samples, "restmq_messages_taken_total", queue="jobs", how="lease") == 2
    assert value(samples, "restmq_messages_acked_total", queue="jobs") == 1, "once per message"
    assert value(samples, "restmq_messages_taken_total", queue="jobs", how="pop") == 0
    assert value(samples, "restmq_leases_expired_total", queue="jobs") == 0


@pytest_twisted.ensureDeferred
async def test_leases_that_ran_out_are_counted_by_the_sweeper_and_by_takes(operations):
    engine = operations.engine
    await operations.add_many("jobs", ["a", "b", "c"])
    await engine.set_max_deliveries("jobs", 1)
    leased = await operations.lease("jobs", 1, n=2)  # a and b: they die when it runs out
    await _run_out(operations, leased)
    sweeper = LeaseSweeper(engine, reactor, metrics=operations.metrics)
    assert await sweeper.sweep() == 2
    samples = counters(operations)
    assert value(samples, "restmq_leases_expired_total", queue="jobs") == 2
    assert value(samples, "restmq_messages_dead_total", queue="jobs") == 2

    await engine.set_max_deliveries("jobs", 0)
    await _run_out(operations, await operations.lease("jobs", 1))  # c
    again = await operations.lease("jobs", 30)  # ends c's lease first, then takes it again
    assert [m.value for m in again] == ["c"]
    samples = counters(operations)
    assert value(samples, "restmq_leases_expired_total", queue="jobs") == 3
    assert value(samples, "restmq_messages_dead_total", queue="jobs") == 2
    assert value(samples, "restmq_messages_taken_total", queue="jobs", how="lease") == 4


def test_two_brokers_in_one_process_keep_their_counts_apart():
    first, second = Metrics(), Metrics()
    first.added("shared", 2)
    first.redis_call("add", 0.0003)
    up = Snapshot(storage_up=True)
    assert (
        value(parse(first.render(up).decode()), "restmq_messages_added_total", queue="shared") == 2
    )
    samples = parse(second.render(up).decode())
    assert value(samples, "restmq_messages_added_total", queue="shared") == 0
    assert value(samples, "restmq_redis_call_seconds_count", call="add") == 0
