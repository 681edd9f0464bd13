"""Streaming consumers over real sockets: COMET (curl, HTTP/1.0), SSE, WebSocket; policies.

The WebSocket route's own rules (handshake, echo, flow control) are in test_websocket.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from tests.support import (
    STORAGE_MODES,
    HttpStream,
    WebSocketStream,
    storage_args,
    wait_consumers,
    wait_for,
)


def post(broker, queue: str, value: str) -> str:
    response = broker.post(f"/q/{queue}", value=value)
    assert response.status == 200, response.text
    return response.text.strip()


def parse(item) -> dict:
    """A delivered message, whatever the reader: a COMET line, an SSE event, a WebSocket text."""
    return json.loads(item["data"] if isinstance(item, dict) else item)


def collect(readers, count: int, timeout: float = 20.0, linger: float = 0.3) -> list[list[str]]:
    """The keys each reader got: wait until ``count`` arrived across all of them, then
    listen ``linger`` seconds more, so that a message delivered twice shows up too."""
    got: list[list[str]] = [[] for _ in readers]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{sum(map(len, got))} of {count} messages in {timeout} s")
        for keys, reader in zip(got, readers, strict=True):
            keys += [parse(item)["key"] for item in reader.drain(0.0)]
        time.sleep(0.02)
    for keys, reader in zip(got, readers, strict=True):
        keys += [parse(item)["key"] for item in reader.drain(linger)]
    return got


@STORAGE_MODES
@pytest.mark.needs("curl")
def test_curl_comet_consumer_gets_each_message_as_a_line(shared_broker, queue):
    curl = subprocess.Popen(
        ["curl", "-sN", f"http://127.0.0.1:{shared_broker.port}/c/{queue}"],
        stdout=subprocess.PIPE,
    )
    try:
        wait_consumers(shared_broker, queue, 1)
        keys = [post(shared_broker, queue, f"hello {i}") for i in range(3)]
        lines = [curl.stdout.readline() for _ in range(3)]
        assert lines == [
            f'{{"key": "{key}", "value": "hello {i}"}}\r\n'.encode() for i, key in enumerate(keys)
        ]
    finally:
        curl.kill()
        curl.wait()
    wait_consumers(shared_broker, queue, 0)


@STORAGE_MODES
def test_comet_jsonp_wraps_each_message(shared_broker, queue):
    stream = HttpStream(shared_broker.port, queue, query="?callback=app.got").start()
    wait_consumers(shared_broker, queue, 1)
    key = post(shared_broker, queue, 'say "hi"')
    assert stream.next() == f'app.got({{"key": "{key}", "value": "say \\"hi\\""}});\r\n'.encode()
    assert stream.response.getheader("Content-Type").startswith("text/plain")
    stream.close()


def test_comet_bad_callback_is_refused(shared_broker, queue):
    response = shared_broker.get(f"/c/{queue}?callback=alert(1)")
    assert response.status == 400
    assert "callback" in response.json()["error"]


@STORAGE_MODES
def test_http10_comet_client_streams_until_the_queue_is_purged(shared_broker, queue):
    with socket.create_connection(("127.0.0.1", shared_broker.port), timeout=10) as sock:
        sock.sendall(f"GET /c/{queue} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".encode())
        wait_consumers(shared_broker, queue, 1)
        key = post(shared_broker, queue, "old client")
        assert shared_broker.request("DELETE", f"/q/{queue}").status == 200
        data = b""
        while chunk := sock.recv(65536):
            data += chunk  # the server closes: an HTTP/1.0 stream ends that way
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"chunked" not in head.lower()
    assert body == f'{{"key": "{key}", "value": "old client"}}\r\nnull\r\n'.encode()


@STORAGE_MODES
def test_backlog_waiting_before_the_consumer_binds_is_delivered_in_order(shared_broker, queue):
    keys = [post(shared_broker, queue, f"early {i}") for i in range(5)]
    stream = HttpStream(shared_broker.port, queue).start()
    got = [json.loads(line) for line in stream.take(5)]
    assert [m["key"] for m in got] == keys
    assert [m["value"] for m in got] == [f"early {i}" for i in range(5)]
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0
    stream.close()


@STORAGE_MODES
def test_consumer_binds_to_a_queue_that_does_not_exist_yet(shared_broker, queue):
    stream = HttpStream(shared_broker.port, queue, sse=True).start()
    wait_consumers(shared_broker, queue, 1)
    assert queue not in shared_broker.get("/stats/").json()["queues"]
    key = post(shared_broker, queue, "first ever")
    assert stream.next_message() == {"key": key, "value": "first ever"}
    stream.close()


@STORAGE_MODES
def test_sse_events_carry_the_key_as_id_and_the_message_as_data(shared_broker, queue):
    stream = HttpStream(shared_broker.port, queue, sse=True).start()
    assert stream.response.getheader("Content-Type").startswith("text/event-stream")
    assert stream.response.getheader("Cache-Control") == "no-cache"
    wait_consumers(shared_broker, queue, 1)
    value = "multi\nline \u00e9t\u00e9 \U0001f680"
    key = post(shared_broker, queue, value)
    event = stream.next()
    assert event["id"] == key
    assert json.loads(event["data"]) == {"key": key, "value": value}
    stream.close()


@STORAGE_MODES
def test_abrupt_websocket_drop_leaves_the_registry_and_loses_nothing(shared_broker, queue):
    ws = WebSocketStream(shared_broker.port, queue)
    wait_consumers(shared_broker, queue, 1)
    ws.ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the client just vanishes
    ws.ws.socket.close()
    wait_consumers(shared_broker, queue, 0)
    key = post(shared_broker, queue, "kept for later")
    assert shared_broker.get(f"/q/{queue}").json()["key"] == key


@STORAGE_MODES
def test_broadcast_sends_every_message_to_every_consumer_of_every_transport(shared_broker, queue):
    comet = HttpStream(shared_broker.port, queue).start()
    sse = HttpStream(shared_broker.port, queue, sse=True).start()
    ws = WebSocketStream(shared_broker.port, queue).start()
    wait_consumers(shared_broker, queue, 3)
    keys = [post(shared_broker, queue, f"news {i}") for i in range(10)]
    for reader in (comet, sse, ws):
        got = [reader.next_message()["key"] for _ in range(10)]
        assert got == keys
        assert reader.drain(0.3) == []
    for reader in (comet, sse, ws):
        reader.close()


@STORAGE_MODES
def test_roundrobin_gives_each_message_to_exactly_one_consumer_in_turn(shared_broker, queue):
    assert shared_broker.post(f"/p/{queue}", policy="roundrobin").status == 200
    readers = [
        HttpStream(shared_broker.port, queue).start(),
        HttpStream(shared_broker.port, queue, sse=True).start(),
        WebSocketStream(shared_broker.port, queue).start(),
    ]
    wait_consumers(shared_broker, queue, 3)
    keys = [post(shared_broker, queue, f"job {i}") for i in range(30)]
    got = collect(readers, len(keys))
    per_consumer = [len(k) for k in got]
    received = [key for k in got for key in k]
    assert sorted(received) == sorted(keys)
    assert len(received) == len(set(received)), "a message went to two consumers"
    assert all(count >= 5 for count in per_consumer), per_consumer  # it rotates
    for reader in readers:
        reader.close()


@STORAGE_MODES
def test_policy_switch_applies_to_consumers_already_connected(shared_broker, queue):
    a = HttpStream(shared_broker.port, queue).start()
    b = HttpStream(shared_broker.port, queue).start()
    wait_consumers(shared_broker, queue, 2)
    first = post(shared_broker, queue, "to both")
    assert a.next_message()["key"] == first
    assert b.next_message()["key"] == first
    shared_broker.post(f"/p/{queue}", policy="roundrobin")
    keys = [post(shared_broker, queue, f"one of {i}") for i in range(6)]
    got_a, got_b = collect([a, b], len(keys))
    assert sorted(got_a + got_b) == sorted(keys), "each message to exactly one of them"
    shared_broker.post(f"/p/{queue}", policy="broadcast")
    last = post(shared_broker, queue, "both again")
    assert a.next_message()["key"] == last
    assert b.next_message()["key"] == last
    a.close()
    b.close()


@STORAGE_MODES
def test_stopped_queue_delivers_nothing_until_started(shared_broker, queue):
    stream = HttpStream(shared_broker.port, queue).start()
    wait_consumers(shared_broker, queue, 1)
    assert shared_broker.post(f"/control/{queue}", status="stop").status == 200
    keys = [post(shared_broker, queue, f"held {i}") for i in range(3)]
    assert stream.drain(0.8) == []
    # plain GET pops still work on a stopped queue
    assert shared_broker.get(f"/q/{queue}").json()["key"] == keys[0]
    assert shared_broker.post(f"/control/{queue}", status="start").status == 200
    assert [stream.next_message()["key"] for _ in range(2)] == keys[1:]
    stream.close()


END_EVENT = {"event": "end", "data": "null"}  # how an SSE stream of a purged queue ends


@STORAGE_MODES
def test_delete_purges_and_ends_every_stream(shared_broker, queue):
    comet = HttpStream(shared_broker.port, queue).start()
    jsonp = HttpStream(shared_broker.port, queue, query="?callback=cb").start()
    sse = HttpStream(shared_broker.port, queue, sse=True).start()
    ws = WebSocketStream(shared_broker.port, queue).start()
    wait_consumers(shared_broker, queue, 4)
    shared_broker.post(f"/control/{queue}", status="stop")
    post(shared_broker, queue, "never delivered")
    answer = shared_broker.request("DELETE", f"/q/{queue}")
    assert answer.json() == {"queue": queue, "status": 1}  # one message was pending
    for reader in (comet, jsonp, sse, ws):
        assert reader.ended.wait(5), "stream did not end"
    assert comet.raw_lines == [b"null\r\n"]
    assert jsonp.raw_lines == [b"cb(null);\r\n"]
    assert sse.drain(0.0) == [END_EVENT]
    assert ws.ws.close_code == 1000
    assert ws.drain(0.0) == []
    assert shared_broker.get(f"/stats/{queue}").json() == {
        "redis": shared_broker.get(f"/stats/{queue}").json()["redis"],
        "queue": queue,
        "len": 0,
        "consumers": 0,
        "leased": 0,
    }


@pytest.fixture(params=["standalone", "cluster"])
def two_brokers(request, broker_factory, valkey_factory):
    """Two brokers sharing one store: a standalone Valkey, or the session Valkey Cluster."""
    if request.param == "cluster":
        args = storage_args("cluster", request)
    else:
        args = ("--redis-port", str(valkey_factory().port))
    return broker_factory(*args), broker_factory(*args)


def test_two_daemons_broadcast_reaches_every_consumer_once_and_fast(two_brokers, queue):
    a, b = two_brokers
    on_a = [HttpStream(a.port, queue).start(), HttpStream(a.port, queue, sse=True).start()]
    on_b = [WebSocketStream(b.port, queue).start()]
    # /stats/ counts the consumers of every broker sharing the Redis
    wait_consumers(a, queue, 3)
    wait_consumers(b, queue, 3)
    latencies = []
    keys = []
    for i in range(20):
        started = time.monotonic()
        keys.append(post(b, queue, f"cross {i}"))
        assert on_a[0].next_message()["key"] == keys[-1]
        latencies.append(time.monotonic() - started)
    for reader in (on_a[1], *on_b):
        assert [reader.next_message()["key"] for _ in range(20)] == keys
    for reader in (*on_a, *on_b):
        assert reader.drain(0.3) == [], "a consumer got a message twice"
    latencies.sort()
    assert latencies[len(latencies) // 2] <= 0.050, latencies


def test_delete_on_one_daemon_ends_every_stream_on_every_daemon(two_brokers, queue):
    a, b = two_brokers
    streams = {}
    for name, broker in (("A", a), ("B", b)):
        streams[name] = {
            "comet": HttpStream(broker.port, queue).start(),
            "jsonp": HttpStream(broker.port, queue, query="?callback=cb").start(),
            "sse": HttpStream(broker.port, queue, sse=True).start(),
            "ws": WebSocketStream(broker.port, queue).start(),
        }
    wait_consumers(a, queue, 8)  # both brokers' consumers
    wait_consumers(b, queue, 8)
    assert b.post(f"/control/{queue}", status="stop").status == 200
    post(b, queue, "never delivered")
    answer = a.request("DELETE", f"/q/{queue}")
    assert answer.status == 200
    assert answer.json() == {"queue": queue, "status": 1}  # one message was pending
    for name, on_broker in streams.items():
        for kind, reader in on_broker.items():
            assert reader.ended.wait(5), f"the {kind} stream on broker {name} did not end"
        assert on_broker["comet"].raw_lines == [b"null\r\n"], name
        assert on_broker["jsonp"].raw_lines == [b"cb(null);\r\n"], name
        assert on_broker["sse"].drain(0.0) == [END_EVENT], name
        assert on_broker["ws"].ws.close_code == 1000, name
        assert on_broker["ws"].drain(0.0) == [], name
    for broker in (a, b):
        stats = broker.get(f"/stats/{queue}").json()
        assert stats["len"] == 0
        wait_consumers(broker, queue, 0)  # the other broker's count follows within a second
    for on_broker in streams.values():
        for reader in on_broker.values():
            reader.close()


def test_two_daemons_roundrobin_delivers_each_message_to_exactly_one_consumer(two_brokers, queue):
    a, b = two_brokers
    a.post(f"/p/{queue}", policy="roundrobin")
    readers = [
        HttpStream(a.port, queue).start(),
        HttpStream(a.port, queue).start(),
        HttpStream(b.port, queue).start(),
        WebSocketStream(b.port, queue).start(),
    ]
    # /stats/ counts the consumers of both brokers: only 4 says all are bound
    wait_consumers(a, queue, 4)
    wait_consumers(b, queue, 4)
    keys = [post(a if i % 2 else b, queue, f"task {i}") for i in range(40)]
    got = [key for keys_of_one in collect(readers, len(keys)) for key in keys_of_one]
    assert sorted(got) == sorted(keys)
    assert len(got) == len(set(got))


def test_slow_consumer_is_dropped_without_holding_back_a_fast_one(broker_factory, queue):
    import psutil

    broker = broker_factory("--consumer-buffer", str(2 * 1024 * 1024))
    process = psutil.Process(broker.proc.pid)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", broker.port))
    slow.sendall(f"GET /c/{queue} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # and never reads
    fast = HttpStream(broker.port, queue, sse=True).start()
    wait_consumers(broker, queue, 2)
    rss_before = process.memory_info().rss
    value = "x" * 100_000
    keys = []
    for _ in range(30):  # 30 batches of 5 x 100 kB: 15 MB for each consumer
        response = broker.request(
            "POST",
            f"/q/{queue}",
            body=json.dumps({"values": [value] * 5}),
            headers={"Content-Type": "application/json"},
        )
        keys += response.json()
    got = [fast.next_message(timeout=20)["key"] for _ in range(len(keys))]
    assert got == keys
    wait_consumers(broker, queue, 1, timeout=20)
    assert "fell" in broker.log() and "behind; disconnecting it" in broker.log()
    growth = process.memory_info().rss - rss_before
    assert growth < 64 * 1024 * 1024, f"broker grew by {growth / 1e6:.0f} MB"
    fast.close()
    slow.close()


def test_max_consumers_answers_503_when_full(broker_factory, queue):
    broker = broker_factory("--max-consumers", "2")
    first = HttpStream(broker.port, queue).start()
    second = WebSocketStream(broker.port, queue).start()
    wait_consumers(broker, queue, 2)
    third = broker.get(f"/c/{queue}")
    assert third.status == 503
    assert "--max-consumers" in third.json()["error"]
    first.close()
    wait_consumers(broker, queue, 1)
    again = HttpStream(broker.port, queue).start()
    wait_consumers(broker, queue, 2)
    again.close()
    second.close()


def test_sse_streams_carry_a_keep_alive_comment(broker_factory, queue):
    broker = broker_factory("--sse-heartbeat", "0.5")
    stream = HttpStream(broker.port, queue, sse=True).start()
    wait_for(
        lambda: sum(line == b": keep-alive\n" for line in stream.raw_lines) >= 2,
        timeout=10,
        what="two keep-alive comments",
    )
    key = post(broker, queue, "still works")
    assert stream.next_message() == {"key": key, "value": "still works"}
    stream.close()


def test_stopping_the_broker_closes_websockets_with_going_away(broker_factory, queue):
    broker = broker_factory()
    ws = WebSocketStream(broker.port, queue).start()
    comet = HttpStream(broker.port, queue).start()
    wait_consumers(broker, queue, 2)
    broker.stop()
    assert ws.ended.wait(10) and comet.ended.wait(10)
    assert ws.ws.close_code == 1001
    assert comet.raw_lines == [b"null\r\n"]
