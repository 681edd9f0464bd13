"""What the protocol does to Redis: expiry, the original key layout, no leaks, outages,
many clients at once; and the curl walk in examples/test_rest.sh."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.support import (
    ROOT,
    assert_error,
    command,
    free_port,
    post_json,
    post_value,
    wait_for,
)


def keys_of(broker, queue: str) -> list[str]:
    """Every key of ``queue`` in Redis, read past the broker."""
    return sorted(broker.redis("KEYS", f"{queue}:*") + broker.redis("KEYS", f"queuestat::{queue}"))


def meta(queue: str) -> list[str]:
    """The keys a queue keeps when it has no messages: its counter and its status."""
    return sorted([f"{queue}:UUID", f"queuestat::{queue}"])


# -- ttl ----------------------------------------------------------------------------


def test_expired_messages_are_skipped_and_cleaned_up(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "expires", ttl="1")
    post_value(b, queue, "lives")
    post_value(b, queue, "expires too", ttl="1")
    post_value(b, queue, "lives too")
    pttl = b.redis("PTTL", f"{queue}:1")  # -2 once expired; -1 would mean no ttl
    assert pttl != -1 and pttl <= 1000
    wait_for(
        lambda: b.redis("EXISTS", f"{queue}:1", f"{queue}:3") == 0,
        timeout=10,
        what="the ttl to expire",
    )
    # the list still names them until a consumer comes by
    assert b.redis("LLEN", f"{queue}:queue") == 4
    assert b.get(f"/q/{queue}").json() == {"key": f"{queue}:2", "value": "lives", "count": 0}
    assert b.get(f"/q/{queue}").json()["key"] == f"{queue}:4"
    assert b.get(f"/q/{queue}").status == 204
    assert keys_of(b, queue) == meta(queue)


def test_expired_messages_are_skipped_by_peek_take_batch_and_root(shared_broker, queue):
    b = shared_broker
    for i in range(6):
        ttl = "1" if i % 2 == 0 else ""
        b.post(f"/q/{queue}", value=f"m{i}", ttl=ttl)
    wait_for(
        lambda: b.redis("EXISTS", *[f"{queue}:{n}" for n in (1, 3, 5)]) == 0,
        timeout=10,
        what="the ttl to expire",
    )
    peek = command(b, {"cmd": "get", "queue": queue}).json()
    assert (peek["key"], peek["value"], peek["count"]) == (f"{queue}:2", "m1", 1)
    assert b.redis("LLEN", f"{queue}:queue") == 5  # the expired head went
    assert command(b, {"cmd": "take", "queue": queue}).json()["value"] == "m1"
    assert [m["value"] for m in b.get(f"/q/{queue}?n=1").json()] == ["m3"]
    assert b.get(f"/?queue={queue}").json()["value"] == "m5"
    assert b.get(f"/q/{queue}?n=10").json() == []
    assert keys_of(b, queue) == meta(queue)


# -- the original key layout ----------------------------------------------------------


def write_like_the_original(broker, queue: str, values: list[str]) -> None:
    """What the 2009 RestMQ did for each add, command by command."""
    for value in values:
        n = broker.redis("INCR", f"{queue}:UUID")
        broker.redis("SET", f"{queue}:{n}", value)
        if n == 1:
            broker.redis("SADD", "QUEUESET", queue)
            broker.redis("SET", f"queuestat::{queue}", "1")
        broker.redis("LPUSH", f"{queue}:queue", f"{queue}:{n}")


def test_a_redis_written_by_the_original_is_served_as_is(shared_broker, queue):
    b = shared_broker
    legacy, stopped = f"{queue}legacy", f"{queue}stopped"
    write_like_the_original(b, legacy, ["first", "42", "café ☕"])
    b.redis("SET", f"{legacy}:queuepolicy", "2")
    b.redis("SET", f"{legacy}:2:refcount", "3")  # message 2 was peeked three times
    write_like_the_original(b, stopped, ["waiting"])
    b.redis("SET", f"queuestat::{stopped}", "0")

    stats = b.get("/stats/").json()["queues"]
    assert stats[legacy] == {
        "name": legacy, "len": 3, "status": 1, "policy": 2, "consumers": 0, "leased": 0,
    }  # fmt: skip
    assert stats[stopped] == {
        "name": stopped, "len": 1, "status": 0, "policy": 1, "consumers": 0, "leased": 0,
    }  # fmt: skip
    assert b.get(f"/p/{legacy}").json()["value"] == "roundrobin"
    assert b.get(f"/p/{stopped}").json()["value"] == "broadcast"
    assert b.get(f"/control/{stopped}").json()["status"] == {"queue": stopped, "status": 0}
    assert b.get("/control/").json()["queues"][legacy] == {"queue": legacy, "status": 1}
    assert f'href="/q/{legacy}"' in b.get("/q/").text
    page = b.get(f"/j/{legacy}").text
    assert '<dd id="objects">3</dd>' in page and '<dd id="pending">3</dd>' in page
    assert f"<li>{legacy}:3</li>\n<li>{legacy}:2</li>\n<li>{legacy}:1</li>" in page

    peek = command(b, {"cmd": "get", "queue": legacy}).json()
    assert peek == {"queue": legacy, "value": "first", "key": f"{legacy}:1", "count": 1}
    assert b.get(f"/q/{legacy}").json() == {"key": f"{legacy}:1", "value": "first", "count": 1}
    assert b.get(f"/q/{legacy}?n=5").json() == [
        {"key": f"{legacy}:2", "value": "42", "count": 3},
        {"key": f"{legacy}:3", "value": "café ☕", "count": 0},
    ]
    # numbering goes on from the original's counter
    assert post_value(b, legacy, "new") == f"{legacy}:4"
    assert b.redis("LRANGE", f"{legacy}:queue", "0", "-1") == [f"{legacy}:4"]
    assert keys_of(b, legacy) == sorted(
        [
            f"{legacy}:4",
            f"{legacy}:UUID",
            f"{legacy}:queue",
            f"{legacy}:queuepolicy",
            f"queuestat::{legacy}",
        ]
    )
    assert command(b, {"cmd": "take", "queue": stopped}).json()["value"] == "waiting"


def test_what_we_write_is_the_original_layout(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "one")
    post_json(b, f"/q/{queue}", {"values": ["two", "three"]})
    b.post(f"/p/{queue}", policy="roundrobin")
    assert b.redis("SISMEMBER", "QUEUESET", queue) == 1
    assert b.redis("GET", f"{queue}:UUID") == "3"
    assert b.redis("TYPE", f"{queue}:queue") == "list"
    # new keys are LPUSHed, so the oldest is on the right (RPOP takes it)
    assert b.redis("LRANGE", f"{queue}:queue", "0", "-1") == [f"{queue}:{n}" for n in (3, 2, 1)]
    assert [b.redis("GET", f"{queue}:{n}") for n in (1, 2, 3)] == ["one", "two", "three"]
    assert b.redis("GET", f"queuestat::{queue}") == "1"
    assert b.redis("GET", f"{queue}:queuepolicy") == "2"
    command(b, {"cmd": "get", "queue": queue})
    assert b.redis("GET", f"{queue}:1:refcount") == "1"


# -- no leaked keys -------------------------------------------------------------------


def test_no_keys_are_left_behind(shared_broker, queue):
    b = shared_broker
    base = meta(queue)
    for i in range(4):
        post_value(b, queue, f"m{i}")
    b.get(f"/q/{queue}")  # pop
    b.get(f"/?queue={queue}")  # pop through /
    command(b, {"cmd": "get", "queue": queue})  # peek: a refcount appears
    assert f"{queue}:3:refcount" in keys_of(b, queue)
    command(b, {"cmd": "take", "queue": queue})  # take the peeked one
    b.get(f"/q/{queue}?n=10")  # batch pop
    assert keys_of(b, queue) == base

    post_json(b, f"/q/{queue}", {"values": [f"b{i}" for i in range(20)]})
    for _ in range(2):
        command(b, {"cmd": "get", "queue": queue})
    command(b, {"cmd": "del", "queue": queue, "key": f"{queue}:6"})
    assert b.redis("LLEN", f"{queue}:queue") == 19
    assert f"{queue}:6:refcount" not in keys_of(b, queue)
    assert b.request("DELETE", f"/q/{queue}").json()["status"] == 1  # purge, peeked ones too
    assert keys_of(b, queue) == base

    key = post_value(b, queue, "short", ttl="1")
    wait_for(lambda: b.redis("EXISTS", key) == 0, timeout=10, what="expiry")
    assert b.get(f"/q/{queue}").status == 204
    assert keys_of(b, queue) == base


def test_purge_of_a_large_queue(shared_broker, queue):
    b = shared_broker
    for _ in range(3):
        post_json(b, f"/q/{queue}", {"values": [f"v{i}" for i in range(1000)]})
    assert b.get(f"/stats/{queue}").json()["len"] == 3000
    assert b.request("DELETE", f"/q/{queue}").json() == {"queue": queue, "status": 1}
    assert keys_of(b, queue) == meta(queue)


# -- storage outage -----------------------------------------------------------------------


def test_redis_unavailable_is_a_503_json_error_on_every_route(broker_factory, valkey_factory):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port))
    assert broker.post("/q/kept", value="safe").status == 200
    server.stop()
    wait_for(lambda: broker.get("/stats/").status == 503, timeout=10, what="the outage")
    body = json.dumps({"cmd": "take", "queue": "kept"})
    attempts = [
        ("POST", "/q/kept", {"value": "x"}),
        ("GET", "/q/kept", None),
        ("GET", "/q/kept?n=5", None),
        ("DELETE", "/q/kept", None),
        ("POST", "/", {"queue": "kept", "value": "x"}),
        ("GET", "/?queue=kept", None),
        ("GET", "/q/", None),
        ("POST", "/queue", {"body": body}),
        ("POST", "/queue/kept", {"body": body}),
        ("GET", "/p/kept", None),
        ("POST", "/p/kept", {"policy": "roundrobin"}),
        ("GET", "/control/kept", None),
        ("GET", "/control/", None),
        ("POST", "/control/kept", {"status": "stop"}),
        ("GET", "/stats/kept", None),
        ("GET", "/stats/", None),
        ("GET", "/j/kept", None),
    ]
    for method, path, form in attempts:
        started = time.monotonic()
        response = broker.request(method, path, form=form)
        assert time.monotonic() - started < 5, (method, path)
        assert_error(response, 503, "storage unavailable")
        assert response.headers["retry-after"] == "1"
    # a JSON body too
    response = post_json(broker, "/q/kept", {"values": ["a", "b"]})
    assert_error(response, 503, "storage unavailable")
    # the static pages do not need storage
    assert broker.get("/static/index.html").status == 200

    server.start()
    wait_for(lambda: broker.get("/stats/").status == 200, timeout=15, what="recovery")
    assert broker.get("/q/kept").json()["value"] == "safe"
    assert broker.get("/q/kept").status == 204
    assert "Traceback" not in broker.log()


# -- many clients at once -----------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection, as a worker thread would hold it."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: str | None = None, content_type: str = ""):
        headers = {"Content-Type": content_type} if content_type else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def run_threads(targets) -> None:
    errors: list[BaseException] = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(fn)) for fn in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


def test_twenty_producers_and_twenty_consumers_pop_every_message_exactly_once(shared_broker, queue):
    b = shared_broker
    per_producer = 25
    produced: dict[str, str] = {}
    popped: list[tuple[str, str]] = []
    lock = threading.Lock()
    producers_done = threading.Event()
    producers_left = [20]

    def producer(i: int):
        def run():
            client = Client(b.port)
            try:
                for j in range(per_producer):
                    value = f"producer {i} message {j} ☃"
                    status, body = client.call(
                        "POST",
                        f"/q/{queue}",
                        f"value={value}".replace(" ", "+").replace("☃", "%E2%98%83"),
                        "application/x-www-form-urlencoded",
                    )
                    assert status == 200, body
                    with lock:
                        produced[body.decode().removesuffix("\r\n")] = value
            finally:
                client.close()
                with lock:
                    producers_left[0] -= 1
                    if producers_left[0] == 0:
                        producers_done.set()

        return run

    def consumer(i: int):
        batch = i % 2 == 1  # half of them pop in batches

        def run():
            client = Client(b.port)
            deadline = time.monotonic() + 90
            try:
                while time.monotonic() < deadline:
                    finished = producers_done.is_set()
                    status, body = client.call("GET", f"/q/{queue}?n=5" if batch else f"/q/{queue}")
                    if status == 204 or body == b"[]\r\n":
                        if finished:
                            return
                        time.sleep(0.005)
                        continue
                    assert status == 200, body
                    messages = json.loads(body)
                    messages = messages if batch else [messages]
                    with lock:
                        popped.extend((m["key"], m["value"]) for m in messages)
                raise AssertionError("consumer ran out of time")
            finally:
                client.close()

        return run

    run_threads([producer(i) for i in range(20)] + [consumer(i) for i in range(20)])

    total = 20 * per_producer
    assert len(produced) == total
    duplicates = [key for key, count in Counter(key for key, _ in popped).items() if count > 1]
    assert duplicates == [], "popped more than once"
    assert dict(popped) == produced, "lost or altered messages"
    assert len(popped) == total
    assert b.get(f"/q/{queue}").status == 204
    assert keys_of(b, queue) == meta(queue)


def test_concurrent_batches_are_each_one_atomic_add(shared_broker, queue):
    b = shared_broker
    answers: dict[int, list[str]] = {}

    def producer(i: int):
        def run():
            client = Client(b.port)
            try:
                for round_ in range(3):
                    values = [f"{i}/{round_}/{j}" for j in range(50)]
                    status, body = client.call(
                        "POST", f"/q/{queue}", json.dumps({"values": values}), "application/json"
                    )
                    assert status == 200, body
                    answers[i * 10 + round_] = json.loads(body)
            finally:
                client.close()

        return run

    run_threads([producer(i) for i in range(10)])
    for keys in answers.values():
        numbers = [int(key.rsplit(":", 1)[1]) for key in keys]
        assert numbers == list(range(numbers[0], numbers[0] + 50)), "a batch was interleaved"
    popped = b.get(f"/q/{queue}?n=1000").json() + b.get(f"/q/{queue}?n=1000").json()
    assert len(popped) == 1500
    for start in range(0, 1500, 50):
        prefixes = {m["value"].rsplit("/", 1)[0] for m in popped[start : start + 50]}
        assert len(prefixes) == 1, "messages of one batch were not contiguous"


# -- examples/test_rest.sh ----------------------------------------------------------------


def run_walk(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "examples" / "test_rest.sh"), *args],
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


def sections(output: str) -> dict[str, tuple[str, str]]:
    """Title -> (answer, status) for every call the walk printed."""
    found = {}
    for block in output.split("\n== ")[1:]:
        lines = block.strip().splitlines()
        title, status = lines[0], lines[-1]
        found[title] = ("\n".join(lines[2:-1]), status)
    return found


@pytest.mark.needs("curl")
def test_the_curl_walk_runs_against_a_live_broker(shared_broker, queue):
    url = f"http://127.0.0.1:{shared_broker.port}"
    result = run_walk(url, env={"RESTMQ_QUEUE": queue})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("all calls answered as expected")
    calls = sections(result.stdout)
    assert len(calls) == 39
    q = queue
    expected = {
        "POST /q/<queue> with value=": (f"{q}:1", "[HTTP 200]"),
        "POST / (the original's route)": (f"{q}:3", "[HTTP 200]"),
        "POST a batch as one atomic add": (f'["{q}:6", "{q}:7", "{q}:8"]', "[HTTP 200]"),
        "POST with JSONP": (f'onKey("{q}:9");', "[HTTP 200]"),
        "GET /q/<queue> pops the oldest message": (
            f'{{"key": "{q}:1", "value": "hello", "count": 0}}',
            "[HTTP 200]",
        ),
        "GET with JSONP": (
            f'onMessage({{"key": "{q}:6", "value": "b1", "count": 0}});',
            "[HTTP 200]",
        ),
        "JSON protocol: add": (f'{{"queue": "{q}", "value": "oi", "key": "{q}:10"}}', "[HTTP 200]"),
        "JSON protocol: del": (
            f'{{"queue": "{q}", "key": "{q}:9", "deleted": true}}',
            "[HTTP 200]",
        ),
        "POST /p/<queue> policy=roundrobin": ("OK", "[HTTP 200]"),
        "GET /p/<queue> again": (
            f'onPolicy({{"queue": "{q}", "value": "roundrobin"}});',
            "[HTTP 200]",
        ),
        "POST /control/<queue> status=stop": (
            f'{{"stat": {{"queue": "{q}", "status": 0}}}}',
            "[HTTP 200]",
        ),
        "DELETE /q/<queue> purges it": (f'{{"queue": "{q}", "status": 1}}', "[HTTP 200]"),
        "GET on an empty queue": ("", "[HTTP 204]"),
    }
    for title, answer in expected.items():
        assert calls[title] == answer, title
    batch = json.loads(calls["GET /q/<queue>?n=3 pops a batch"][0])
    assert [m["value"] for m in batch] == ["classic", "perishable", '{"order": 42}']
    assert f'href="/q/{q}"' in calls["GET /q/ lists the queues"][0]
    assert calls["a bad queue name"][1] == "[HTTP 400]"


@pytest.mark.needs("curl")
def test_the_curl_walk_reads_its_url_from_the_environment_and_fails_loudly(shared_broker):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_walk(env={"RESTMQ_URL": url})
    assert result.returncode != 0
    assert f"RestMQ at {url}, queue rest_walk" in result.stdout
    assert "all calls answered" not in result.stdout
    assert "Failed to connect" in result.stderr or "Couldn't connect" in result.stderr
    result = run_walk(env={"RESTMQ_URL": f"http://127.0.0.1:{shared_broker.port}/static"})
    assert result.returncode == 1
    assert "start from an empty queue: expected HTTP 200, got 405" in result.stderr
