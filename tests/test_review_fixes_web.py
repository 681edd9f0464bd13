"""Review fixes on the web side, against real brokers over real sockets.

- JSON input that Python's json module takes but JSON does not (NaN, Infinity,
  1e999) or that nests too deep is a 400 with nothing stored; answers are strict JSON.
- XML-RPC values JSON cannot hold (dates or binary inside arrays/structs, inf/nan
  doubles, deep nesting) are fault 400.
- The JSON protocol (POST /queue) checks acl.conf per command: get/take consume.
- A request body that does not arrive within --header-timeout drops the connection.
"""

from __future__ import annotations

import datetime
import json
import time
import xmlrpc.client

import pytest

from tests import wire
from tests.answers import JSON_TYPE, assert_error, command, post_json
from tests.support import request, wait_for
from tests.test_acl import call, error_of, start_broker, wait_answering

TOO_DEEP = "JSON nested too deeply"


def strict_json(body: bytes):
    """Parse an answer the way a strict JSON parser would: NaN and Infinity are errors."""

    def refuse(name):
        raise AssertionError(f"the answer holds {name}, which is not JSON: {body[:200]!r}")

    return json.loads(body, parse_constant=refuse)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def nothing_stored(broker, queue: str) -> bool:
    return broker.redis("EXISTS", f"{queue}:queue", f"{queue}:1", f"{queue}:UUID") == 0


# -- 1. JSON input: nesting, NaN and Infinity --------------------------------------------


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


def test_large_finite_numbers_are_stored_and_answers_are_strict_json(shared_broker, queue):
    b = shared_broker
    added = post_json(b, "/queue", {"cmd": "add", "queue": queue, "value": [1e308, -2.5e-300]})
    assert added.status == 200, added.body
    assert added.headers["content-type"] == JSON_TYPE
    assert strict_json(added.body) == {
        "queue": queue,
        "value": [1e308, -2.5e-300],
        "key": f"{queue}:1",
    }
    taken = command(b, {"cmd": "take", "queue": queue})
    assert strict_json(taken.body)["value"] == "[1e+308, -2.5e-300]"


# -- 1 and 2. XML-RPC values JSON cannot hold --------------------------------------------


def rpc(broker) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{broker.port}/xmlrpc")


def fault_of(call_it) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        call_it()
    return caught.value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ([datetime.datetime(2026, 1, 2, 3, 4, 5)], "cannot hold a dateTime.iso8601 value"),
        ({"when": xmlrpc.client.DateTime("20260102T03:04:05")}, "cannot hold a dateTime.iso8601"),
        ({"b": xmlrpc.client.Binary(b"\xff")}, "cannot hold a base64 value"),
        ([1, [xmlrpc.client.Binary(b"text")]], "cannot hold a base64 value"),
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        (float("nan"), "finite"),
        ({"x": [1.5, float("inf")]}, "finite"),
    ],
    ids=["datetime-in-array", "datetime-in-struct", "binary-in-struct", "binary-deep",
         "inf", "-inf", "nan", "inf-in-struct"],
)  # fmt: skip
def test_xmlrpc_values_json_cannot_hold_are_fault_400(shared_broker, queue, value, text):
    server = rpc(shared_broker)
    for method in ("add", "set"):
        fault = fault_of(lambda method=method: getattr(server, method)(queue, value))
        assert fault.faultCode == 400, fault
        assert text in fault.faultString, fault.faultString
        assert "Traceback" not in fault.faultString
    assert nothing_stored(shared_broker, queue)
    # the same call with a value JSON can hold goes through
    assert server.add(queue, {"x": [1.5, 2]}) == f"{queue}:1"
    assert shared_broker.get(f"/q/{queue}").json()["value"] == '{"x": [1.5, 2]}'


def test_xmlrpc_deeply_nested_arrays_are_fault_400(shared_broker, queue):
    # xmlrpc.client itself cannot marshal this deep a value: write the XML by hand
    depth = 3000
    value = "<value><array><data>" * depth + "</data></array></value>" * depth
    body = (
        "<?xml version='1.0'?><methodCall><methodName>add</methodName><params>"
        f"<param><value><string>{queue}</string></value></param><param>{value}</param>"
        "</params></methodCall>"
    ).encode()
    response = request(
        shared_broker.port, "POST", "/xmlrpc", body=body, headers={"Content-Type": "text/xml"}
    )
    assert response.status == 200
    fault = fault_of(lambda: xmlrpc.client.loads(response.body))
    assert (fault.faultCode, fault.faultString) == (400, TOO_DEEP)
    assert nothing_stored(shared_broker, queue)


# -- 3. the JSON protocol checks rights per command --------------------------------------

SPLIT_ACL = """\
# 127.0.0.2 may only consume, 127.0.0.3 may only produce; 127.0.0.1 may do both
[rest:producer]
hosts_allow = 127.0.0.1 127.0.0.3
hosts_deny = all

[rest:consumer]
hosts_allow = 127.0.0.1 127.0.0.2
hosts_deny = all
"""
CONSUMER_ONLY, PRODUCER_ONLY = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def split_broker(tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("split-acl"), SPLIT_ACL)
    try:
        wait_answering(broker)
        broker.wait_ready()
        yield broker
    finally:
        broker.stop()


def send(broker, source: str, cmd, as_json: bool, path: str = "/queue"):
    """A JSON-protocol command from ``source``: as an application/json body or form field."""
    if as_json:
        body = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
        headers = {"Content-Type": "application/json"}
        return call(broker.port, "POST", path, source=source, body=body, headers=headers)
    text = cmd.decode() if isinstance(cmd, bytes) else json.dumps(cmd)
    return call(broker.port, "POST", path, source=source, form={"body": text})


def refused(response, address: str, section: str) -> None:
    assert response.status == 403, response.body
    assert error_of(response) == f"access from {address} is not allowed ({section})"


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_a_consumer_only_client_may_get_and_take_but_not_add_or_del(split_broker, queue, as_json):
    b = split_broker
    key = send(b, "127.0.0.1", {"cmd": "add", "queue": queue, "value": "v1"}, as_json).json()["key"]
    send(b, "127.0.0.1", {"cmd": "add", "queue": queue, "value": "v2"}, as_json)

    got = send(b, CONSUMER_ONLY, {"cmd": "get", "queue": queue}, as_json)
    assert got.status == 200, got.body
    assert got.json()["value"] == "v1"
    taken = send(b, CONSUMER_ONLY, {"cmd": "take"}, as_json, path=f"/queue/{queue}")
    assert taken.status == 200, taken.body
    assert (taken.json()["key"], taken.json()["value"]) == (key, "v1")

    for cmd in (
        {"cmd": "add", "queue": queue, "value": "sneaky"},
        {"cmd": "del", "queue": queue, "key": f"{queue}:2"},
        {"cmd": "nope", "queue": queue},  # unknown: judged as a producer's command
        {"queue": queue},
        ["take", queue],
        b"{not json",
    ):
        refused(send(b, CONSUMER_ONLY, cmd, as_json), CONSUMER_ONLY, "rest:producer")
    # nothing was added or deleted: v2 is still the only message
    assert b.redis("LRANGE", f"{queue}:queue", "0", "-1") == [f"{queue}:2"]
    assert b.redis("GET", f"{queue}:2") == "v2"


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
def test_a_producer_only_client_may_add_and_del_but_not_get_or_take(split_broker, queue, as_json):
    b = split_broker
    added = send(b, PRODUCER_ONLY, {"cmd": "add", "queue": queue, "value": "v1"}, as_json)
    assert added.status == 200, added.body
    assert added.json() == {"queue": queue, "value": "v1", "key": f"{queue}:1"}
    send(b, PRODUCER_ONLY, {"cmd": "add", "queue": queue, "value": "v2"}, as_json)

    for cmd in ({"cmd": "get", "queue": queue}, {"cmd": "take", "queue": queue}):
        refused(send(b, PRODUCER_ONLY, cmd, as_json), PRODUCER_ONLY, "rest:consumer")
    assert sorted(b.redis("LRANGE", f"{queue}:queue", "0", "-1")) == [f"{queue}:1", f"{queue}:2"]

    deleted = send(b, PRODUCER_ONLY, {"cmd": "del", "queue": queue, "key": f"{queue}:1"}, as_json)
    assert deleted.status == 200, deleted.body
    assert deleted.json()["deleted"] is True
    # a producer is told what is wrong with a command it may send
    assert_error(send(b, PRODUCER_ONLY, {"cmd": "nope", "queue": queue}, as_json), 400)
    assert_error(send(b, PRODUCER_ONLY, b"{not json", as_json), 400, "malformed JSON")
    # the consumer takes what is left
    taken = send(b, CONSUMER_ONLY, {"cmd": "take", "queue": queue}, as_json)
    assert taken.json()["value"] == "v2"


def test_get_queue_still_needs_consumer_rights(split_broker):
    response = call(split_broker.port, "GET", "/queue", source=PRODUCER_ONLY)
    refused(response, PRODUCER_ONLY, "rest:consumer")
    assert call(split_broker.port, "GET", "/queue", source=CONSUMER_ONLY).status == 302


# -- 4. a slow request body is timed out -------------------------------------------------


@pytest.fixture
def impatient_broker(broker_factory):
    return broker_factory("--header-timeout", "1")


def body_head(queue: str, length: int) -> bytes:
    return (
        f"POST /q/{queue} HTTP/1.1\r\nHost: test\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_that_never_completes_is_dropped(impatient_broker, queue):
    b = impatient_broker
    with wire.connect(b.port) as sock:
        sock.sendall(body_head(queue, 100) + b"value=")  # 6 of 100 bytes, then nothing
        started = time.monotonic()
        # the server closes the connection without an answer, well before the client gives up
        assert wire.read_until_closed(sock, 30) == b""
        assert time.monotonic() - started < 25
    wait_for(
        lambda: "did not finish its request body in time" in b.log(),
        20,
        what="the broker to log the dropped body",
    )
    assert nothing_stored(b, queue)


def test_a_body_sent_in_pieces_in_time_is_served_and_the_connection_kept(impatient_broker, queue):
    b = impatient_broker
    body = b"value=in+pieces"
    with wire.connect(b.port) as sock:
        sock.sendall(body_head(queue, len(body)) + body[:6])
        time.sleep(0.1)
        sock.sendall(body[6:])
        reader = wire.Reader(sock)
        first = reader.read_response("POST")
        assert (first.status, first.body) == (200, f"{queue}:1\r\n".encode())
        # the same keep-alive connection serves the next request
        sock.sendall(f"GET /q/{queue} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        second = reader.read_response()
        assert second.status == 200
        assert json.loads(second.body)["value"] == "in pieces"
