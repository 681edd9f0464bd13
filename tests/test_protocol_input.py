"""Input rules: names, callbacks, ttl, batch sizes, JSON numbers and nesting, body size,
exact storage.

Bad input gets a 4xx with a JSON {"error": ...} body, and nothing is stored.
"""

from __future__ import annotations

import json
import urllib.parse

import psutil
import pytest

from tests import support as wire
from tests.support import (
    JSON_TYPE,
    STORAGE_MODES,
    Broker,
    assert_error,
    command,
    nothing_stored,
    post_json,
    post_value,
    registered,
    stem,
    store_command,
)

VALID_NAMES = ["a", "A_b-c.d:e@f", "0", "x" * 200, "user@example.com", "jobs:high.priority"]


def queue_keys(broker, queue: str) -> list[str]:
    """Every key the broker keeps for ``queue`` (raw Redis, past the broker), in the 2009
    layout of the embedded Valkey: the tests that use it check input rules, which refuse
    bad input before any store is asked, so they run on the embedded Valkey only."""
    keys = broker.redis("KEYS", f"{queue}:*") + broker.redis("KEYS", f"queuestat::{queue}")
    return sorted(keys)


@STORAGE_MODES
def test_valid_queue_names_round_trip(shared_broker, queue):
    b = shared_broker
    for suffix in VALID_NAMES:
        name = f"{queue}{suffix}"[:200]
        quoted = urllib.parse.quote(name, safe="")
        assert b.post(f"/q/{quoted}", value="v").text == f"{b.key(name, 1)}\r\n"
        assert b.get(f"/q/{quoted}").json()["key"] == b.key(name, 1)
        assert b.post("/", queue=name, value="w").text == f"{b.key(name, 2)}\r\n"
        assert b.get(f"/stats/{quoted}").json()["queue"] == name
        assert registered(b, name)


@pytest.mark.parametrize(
    ("raw_path", "name"),
    [
        ("a+b", "a+b"),  # "+" in a path is a plus, not a space
        ("a%2Bb", "a+b"),
        ("a%2Fb", "a/b"),
        ("a/b", "a/b"),
        ("a%20b", "a b"),
        ("%F0%9F%98%80", "\U0001f600"),
        ("caf%C3%A9", "café"),
        ("a%00b", "a\x00b"),
        ("a%23b", "a#b"),
        ("a%3Fb", "a?b"),
        ("a*", "a*"),
        ("x" * 201, "x" * 201),
    ],
)
def test_invalid_queue_names_in_paths_are_400(shared_broker, raw_path, name):
    b = shared_broker
    for method, path in [
        ("POST", f"/q/{raw_path}"),
        ("GET", f"/q/{raw_path}"),
        ("DELETE", f"/q/{raw_path}"),
        ("GET", f"/p/{raw_path}"),
        ("POST", f"/p/{raw_path}"),
        ("GET", f"/control/{raw_path}"),
        ("POST", f"/control/{raw_path}"),
        ("GET", f"/stats/{raw_path}"),
        ("GET", f"/j/{raw_path}"),
        ("POST", f"/queue/{raw_path}"),
    ]:
        form = {"value": "v", "policy": "roundrobin", "status": "stop"}
        if path.startswith("/queue/"):
            form = {"body": json.dumps({"cmd": "add", "value": "v"})}
        response = b.request(method, path, form=form if method == "POST" else None)
        error = assert_error(response, 400, "invalid queue name")
        assert repr(name[:60]) in error, (method, path, error)
    assert b.redis("SISMEMBER", "QUEUESET", name) == 0
    assert b.redis("EXISTS", f"{name}:UUID", f"{name}:queue", f"queuestat::{name}") == 0


@pytest.mark.parametrize("name", ["a b", "a+b", "a/b", "ü", "x" * 201, "semi;colon"])
def test_invalid_queue_names_in_arguments_are_400(shared_broker, name):
    b = shared_broker
    assert_error(b.post("/", queue=name, value="v"), 400, "invalid queue name")
    assert_error(b.get("/?" + urllib.parse.urlencode({"queue": name})), 400, "invalid queue name")
    cmd = {"cmd": "add", "queue": name, "value": "v"}
    assert_error(b.post("/queue", body=json.dumps(cmd)), 400, "invalid queue name")
    assert b.redis("SISMEMBER", "QUEUESET", name) == 0


@pytest.mark.parametrize(
    "callback", ["alert(1)", "a b", "1abc", "a-b", "<script>", "cb;", "a[0]", "x" * 201]
)
def test_bad_callbacks_are_400_and_change_nothing(shared_broker, queue, callback):
    b = shared_broker
    post_value(b, queue, "keep me")
    cb = urllib.parse.quote(callback, safe="")
    attempts = [
        ("POST", f"/q/{queue}?callback={cb}", {"value": "x"}),
        ("GET", f"/q/{queue}?callback={cb}", None),
        ("GET", f"/q/{queue}?n=5&callback={cb}", None),
        ("DELETE", f"/q/{queue}?callback={cb}", None),
        ("POST", f"/?callback={cb}", {"queue": queue, "value": "x"}),
        ("GET", f"/?queue={queue}&callback={cb}", None),
        ("GET", f"/p/{queue}?callback={cb}", None),
        ("POST", f"/p/{queue}?callback={cb}", {"policy": "roundrobin"}),
        ("GET", f"/control/{queue}?callback={cb}", None),
        ("POST", f"/control/{queue}?callback={cb}", {"status": "stop"}),
        ("GET", f"/control/?callback={cb}", None),
        ("GET", f"/stats/{queue}?callback={cb}", None),
        ("GET", f"/stats/?callback={cb}", None),
    ]
    for method, path, form in attempts:
        response = b.request(method, path, form=form)
        assert_error(response, 400, "invalid callback")
    # the callback may also come in the form body
    assert_error(b.post(f"/q/{queue}", value="x", callback=callback), 400, "invalid callback")
    assert b.get(f"/q/{queue}?n=10").json() == [
        {"key": f"{queue}:1", "value": "keep me", "count": 0}
    ]
    assert b.redis("GET", f"{queue}:queuepolicy") is None
    assert b.redis("GET", f"queuestat::{queue}") == "1"


@pytest.mark.parametrize("callback", ["cb", "$", "_x", "app.on_message", "jQuery1_2", "a$b.c9"])
def test_good_callbacks_wrap_the_answer(shared_broker, queue, callback):
    response = shared_broker.get(f"/stats/{queue}?callback={callback}")
    assert response.status == 200
    assert response.text.startswith(callback + "({")
    assert response.text.endswith("});\r\n")


@pytest.mark.parametrize("ttl", ["0", "-1", "abc", "1.5", "1e3", "0x10", "999999999999"])
def test_bad_ttl_is_400_and_stores_nothing(shared_broker, queue, ttl):
    b = shared_broker
    assert_error(b.post(f"/q/{queue}", value="v", ttl=ttl), 400, "ttl must be")
    assert_error(b.post("/", queue=queue, value="v", ttl=ttl), 400, "ttl must be")
    assert_error(post_json(b, f"/q/{queue}", {"value": "v", "ttl": ttl}), 400, "ttl must be")
    cmd = {"cmd": "add", "queue": queue, "value": "v", "ttl": ttl}
    assert_error(b.post("/queue", body=json.dumps(cmd)), 400, "ttl must be")
    assert queue_keys(b, queue) == []


@pytest.mark.parametrize("ttl", [True, 1.5, [1], {"s": 1}, -3])
def test_bad_json_ttl_types_are_400(shared_broker, queue, ttl):
    b = shared_broker
    assert_error(post_json(b, f"/q/{queue}", {"value": "v", "ttl": ttl}), 400, "ttl must be")
    assert queue_keys(b, queue) == []


@STORAGE_MODES
def test_good_ttl_sets_the_expiry_of_the_message_only(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "v", ttl="100")
    assert 90 < store_command(b, "TTL", b.key(queue, 1)) <= 100
    assert store_command(b, "TTL", f"{stem(b, queue)}:queue") == -1
    assert store_command(b, "TTL", f"{stem(b, queue)}:UUID") == -1


@pytest.mark.parametrize("n", ["0", "-1", "1001", "abc", "1.5", "10000000000000000000000"])
def test_bad_batch_size_is_400_and_pops_nothing(shared_broker, queue, n):
    b = shared_broker
    post_value(b, queue, "stay")
    assert_error(b.get(f"/q/{queue}?n={n}"), 400, "n must be a whole number from 1 to 1000")
    assert b.get(f"/stats/{queue}").json()["len"] == 1


# -- values are stored exactly --------------------------------------------------

EXACT_VALUES = [
    "\U0001f600 emoji \U0001f680 and ü",
    "double \" and single ' quotes",
    "back\\slash \\n not a newline",
    "control \x01\x02\x07\x08\x0b\x0c\x0e\x1f\x7f chars",
    "tab\tnew\nline\rreturn",
    "nul \x00 inside",
    "007",
    "42",
    "-0",
    "1e3",
    "+5",
    "true",
    "null",
    "  padded with spaces  ",
    '{"looks": "like json"}',
    "</script><script>alert(1)</script>",
    "a=b&c=d+e%20f",
]


@STORAGE_MODES
@pytest.mark.parametrize("value", EXACT_VALUES, ids=range(len(EXACT_VALUES)))
def test_values_are_stored_and_returned_exactly(shared_broker, queue, value):
    b = shared_broker
    post_value(b, queue, value)  # form-encoded POST /q
    b.post("/", queue=queue, value=value)
    post_json(b, f"/q/{queue}", {"value": value})
    b.post("/queue", body=json.dumps({"cmd": "add", "queue": queue, "value": value}))
    for n in range(1, 5):
        assert store_command(b, "GET", b.key(queue, n)) == value
    popped = b.get(f"/q/{queue}?n=4").json()
    assert [m["value"] for m in popped] == [value] * 4
    assert all(isinstance(m["value"], str) for m in popped)


@STORAGE_MODES
def test_one_mebibyte_values(shared_broker, queue):
    b = shared_broker
    mib = 1024 * 1024
    text = "0123456789abcdef\U0001f600" * (mib // 20 + 1) + "!"
    assert len(text.encode()) >= mib
    assert post_value(b, queue, text) == b.key(queue, 1)
    assert post_json(b, f"/q/{queue}", {"value": text}).status == 200
    cmd = {"cmd": "add", "queue": queue, "value": text}
    assert b.post("/queue", body=json.dumps(cmd)).status == 200
    assert b.get(f"/q/{queue}").json()["value"] == text
    assert b.get(f"/q/{queue}?n=2").json()[1]["value"] == text
    assert store_command(b, "EXISTS", *(b.key(queue, n) for n in (1, 2, 3))) == 0


def test_non_utf8_argument_is_400(shared_broker, queue):
    b = shared_broker
    response = b.request(
        "POST",
        f"/q/{queue}",
        body=b"value=%FF%FE",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 400, "argument 'value' is not valid UTF-8")
    response = b.post(f"/q/{queue}?callback=%FFcb", value="v")
    assert_error(response, 400, "argument 'callback' is not valid UTF-8")
    assert_error(b.get("/?queue=%C3%28"), 400, "argument 'queue' is not valid UTF-8")
    assert queue_keys(b, queue) == []
    # a real U+FFFD sent as UTF-8 is a value like any other
    assert b.post(f"/q/{queue}", value="\ufffd").status == 200
    assert b.get(f"/q/{queue}").json()["value"] == "\ufffd"


def test_lone_surrogates_in_json_are_400_and_store_nothing(shared_broker, queue):
    b = shared_broker
    raw = b'{"value": "half \\ud800 a pair"}'
    assert_error(post_json(b, f"/q/{queue}", None, raw=raw), 400, "text that is not valid Unicode")
    batch = b'{"values": ["fine", "\\udfff"]}'
    assert_error(post_json(b, f"/q/{queue}", None, raw=batch), 400, "text that is not valid")
    cmd = b'{"cmd": "add", "queue": "%s", "value": "\\ud83d"}' % queue.encode()
    assert_error(post_json(b, "/queue", None, raw=cmd), 400, "text that is not valid Unicode")
    assert queue_keys(b, queue) == []


# -- JSON that Python's json module takes but JSON does not: NaN, Infinity, deep nesting ----

TOO_DEEP = "JSON nested too deeply"


def strict_json(body: bytes):
    """Parse an answer the way a strict JSON parser would: NaN and Infinity are errors."""

    def refuse(name):
        raise AssertionError(f"the answer holds {name}, which is not JSON: {body[:200]!r}")

    return json.loads(body, parse_constant=refuse)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_400_and_stores_nothing(shared_broker, queue):
    b = shared_broker
    deep = nested(5000)
    raw_bodies = [
        ("/queue", f'{{"cmd": "add", "queue": "{queue}", "value": {deep}}}'),
        (f"/queue/{queue}", f'{{"cmd": "add", "value": {deep}}}'),
        (f"/q/{queue}", f'{{"value": {deep}}}'),
        (f"/q/{queue}", f'{{"values": ["ok", {deep}]}}'),
        (f"/q/{queue}", deep),
    ]
    for path, raw in raw_bodies:
        response = post_json(b, path, None, raw=raw.encode())
        assert_error(response, 400, TOO_DEEP)
    # the original's form field too
    form = b.post("/queue", body=f'{{"cmd": "add", "queue": "{queue}", "value": {deep}}}')
    assert_error(form, 400, TOO_DEEP)
    assert nothing_stored(b, queue)
    # a value nested a little is still stored as its JSON text
    ok = post_json(b, f"/q/{queue}", {"value": [[[1]]]})
    assert ok.status == 200, ok.body
    assert b.get(f"/q/{queue}").json()["value"] == "[[[1]]]"


NON_FINITE = [
    ("/queue", '{{"cmd": "add", "queue": "{q}", "value": 1e999}}'),
    ("/queue", '{{"cmd": "add", "queue": "{q}", "value": -1e999}}'),
    ("/queue", '{{"cmd": "add", "queue": "{q}", "value": NaN}}'),
    ("/queue", '{{"cmd": "add", "queue": "{q}", "value": [Infinity]}}'),
    ("/queue/{q}", '{{"cmd": "add", "value": {{"a": -Infinity}}}}'),
    ("/q/{q}", '{{"value": {{"a": NaN}}}}'),
    ("/q/{q}", '{{"value": 1e999}}'),
    ("/q/{q}", '{{"values": ["ok", [1, 2e400]]}}'),
    ("/q/{q}", '{{"value": "x", "ttl": NaN}}'),
]


@pytest.mark.parametrize(("path", "raw"), NON_FINITE, ids=[raw for _, raw in NON_FINITE])
def test_nan_and_infinity_are_400_and_store_nothing(shared_broker, queue, path, raw):
    b = shared_broker
    raw = raw.format(q=queue)
    response = post_json(b, path.format(q=queue), None, raw=raw.encode())
    error = assert_error(response, 400)
    assert "finite" in error, error
    strict_json(response.body)
    if path == "/queue":  # the original's form field is read the same way
        error = assert_error(b.post("/queue", body=raw), 400)
        assert "finite" in error, error
    assert nothing_stored(b, queue)


@STORAGE_MODES
def test_large_finite_numbers_are_stored_and_answers_are_strict_json(shared_broker, queue):
    b = shared_broker
    added = post_json(b, "/queue", {"cmd": "add", "queue": queue, "value": [1e308, -2.5e-300]})
    assert added.status == 200, added.body
    assert added.headers["content-type"] == JSON_TYPE
    assert strict_json(added.body) == {
        "queue": queue,
        "value": [1e308, -2.5e-300],
        "key": b.key(queue, 1),
    }
    taken = command(b, {"cmd": "take", "queue": queue})
    assert strict_json(taken.body)["value"] == "[1e+308, -2.5e-300]"


# -- body size ----------------------------------------------------------------------

LIMIT = 4096


@pytest.fixture(scope="module")
def small_body_broker(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("small-body"), ["--max-body", str(LIMIT)])
    broker.start()
    yield broker
    broker.stop()


def test_body_at_the_limit_is_accepted_and_over_it_is_413(small_body_broker, queue):
    b = small_body_broker
    fits = "x" * (LIMIT - len("value="))
    assert b.post(f"/q/{queue}", value=fits).status == 200
    response = b.post(f"/q/{queue}", value=fits + "x")
    assert response.status == 413
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json() == {
        "error": f"request body of {LIMIT + 1} bytes is over the limit of {LIMIT} bytes"
    }
    too_big = post_json(b, f"/q/{queue}", {"value": "y" * LIMIT})
    assert too_big.status == 413
    assert b.get(f"/stats/{queue}").json()["len"] == 1


def test_413_comes_before_the_body_is_sent(small_body_broker, queue):
    b = small_body_broker
    claimed = 500 * 1024 * 1024
    with wire.connect(b.port) as sock:
        sock.sendall(
            f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {claimed}\r\n\r\nvalue=".encode()
        )
        # nothing more is sent: the answer must come from the headers alone
        response = wire.Reader(sock).read_response("POST")
    assert response.status == 413
    assert response.headers["connection"] == "close"
    assert json.loads(response.body)["error"].startswith(f"request body of {claimed} bytes")
    # the server is healthy: new connections are served
    assert b.post(f"/q/{queue}", value="after").text == f"{queue}:1\r\n"


def test_413_with_expect_continue_sends_no_continue(small_body_broker, queue):
    b = small_body_broker
    with wire.connect(b.port) as sock:
        sock.sendall(
            f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Content-Length: 10485760\r\n\r\n".encode()
        )
        reader = wire.Reader(sock)
        response = reader.read_response("POST")
        assert response.status == 413
        assert reader.closed()


def test_oversized_bodies_do_not_grow_the_broker(small_body_broker, queue):
    b = small_body_broker
    process = psutil.Process(b.proc.pid)
    before = process.memory_info().rss
    junk = b"z" * (1024 * 1024)
    size = 16 * len(junk)
    for _ in range(3):
        with wire.connect(b.port) as sock:
            sock.sendall(
                f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {size}\r\n\r\n".encode()
            )
            reader = wire.Reader(sock)
            assert reader.read_response("POST").status == 413
            try:  # a client that sends its body anyway: the broker reads it and drops it
                for _ in range(16):
                    sock.sendall(junk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert reader.closed(timeout=15)
    growth = process.memory_info().rss - before
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth} bytes"
    # it still serves, on a fresh connection and on a kept-alive one
    assert b.post(f"/q/{queue}", value="still fine").status == 200
    with wire.connect(b.port) as sock:
        sock.sendall(wire.form_request("GET", f"/q/{queue}") + wire.form_request("GET", "/q/none"))
        reader = wire.Reader(sock)
        assert json.loads(reader.read_response().body)["value"] == "still fine"
        assert reader.read_response().status == 204
    log = b.log()
    assert f"refused a {size}-byte request body (limit {LIMIT})" in log
    assert "Traceback" not in log
