"""XML-RPC at /xmlrpc and /RPC2 against live brokers, with Python's own xmlrpc.client."""

from __future__ import annotations

import datetime
import http.client
import subprocess
import sys
import time
import xmlrpc.client

import pytest

from tests.support import (
    ROOT,
    STORAGE_MODES,
    Broker,
    HttpStream,
    basic,
    make_hash,
    nothing_stored,
    request,
    start_broker,
    stem,
    storage_args,
    store_command,
    wait_for,
)

PASSWORD = "xml:rpc pass"

ACL = """\
[rest:producer]
username = writer
password = {hash}

[rest:consumer]
hosts_deny = 127.0.0.3
"""

EVERY_METHOD = {
    "set", "get", "add", "take", "del", "len", "queues", "policy_get", "policy_set",
    "status", "start", "stop", "stats", "system.listMethods", "system.methodHelp",
    "system.methodSignature", "system.multicall", "lease", "ack", "release",
}  # fmt: skip


class SourceTransport(xmlrpc.client.Transport):
    """xmlrpc.client's transport, connecting from a chosen loopback address."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def make_connection(self, host):
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        real_host, self._extra_headers, _ = self.get_host_info(host)
        connection = http.client.HTTPConnection(
            real_host, timeout=15, source_address=(self.source, 0)
        )
        self._connection = host, connection
        return connection


def proxy(
    broker: Broker,
    *,
    user: str | None = None,
    password: str = PASSWORD,
    source: str = "127.0.0.1",
    path: str = "/xmlrpc",
) -> xmlrpc.client.ServerProxy:
    credentials = f"{user}:{password}@".replace(" ", "%20") if user else ""
    url = f"http://{credentials}127.0.0.1:{broker.port}{path}"
    return xmlrpc.client.ServerProxy(url, transport=SourceTransport(source))


@pytest.fixture(scope="module")
def rpc_broker(tmp_path_factory, storage, request):
    """A broker whose acl.conf guards producing, on the store the test runs on."""
    broker = start_broker(
        tmp_path_factory.mktemp("xmlrpc"),
        ACL.format(hash=make_hash(PASSWORD)),
        *storage_args(storage, request),
    )
    try:
        broker.wait_ready()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def writer(rpc_broker):
    return proxy(rpc_broker, user="writer")


@pytest.fixture
def reader(rpc_broker):
    return proxy(rpc_broker)


def fault_of(call) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        call()
    return caught.value


def stored(broker: Broker, queue: str) -> list:
    return store_command(broker, "LRANGE", f"{stem(broker, queue)}:queue", "0", "-1")


# -- every method ------------------------------------------------------------------------


@STORAGE_MODES
@pytest.mark.parametrize("path", ["/xmlrpc", "/RPC2"])
def test_the_original_pair_set_and_get(rpc_broker, queue, path):
    server = proxy(rpc_broker, user="writer", path=path)
    assert server.set(queue, "tuna-boy") == rpc_broker.key(queue, 1)
    assert server.set(queue, "second") == rpc_broker.key(queue, 2)
    assert server.get(queue) == "tuna-boy"
    assert server.get(queue) == "second"
    bodies = (rpc_broker.key(queue, 1), rpc_broker.key(queue, 2))
    assert store_command(rpc_broker, "EXISTS", *bodies) == 0, "a get deletes the body"
    fault = fault_of(lambda: server.get(queue))
    assert (fault.faultCode, fault.faultString) == (404, f"queue {queue!r} is empty")


@STORAGE_MODES
def test_add_take_and_ttl(rpc_broker, writer, reader, queue):
    assert writer.add(queue, "forever") == rpc_broker.key(queue, 1)
    assert writer.add(queue, "brief", 60) == rpc_broker.key(queue, 2)
    assert store_command(rpc_broker, "TTL", rpc_broker.key(queue, 1)) == -1
    assert 0 < store_command(rpc_broker, "TTL", rpc_broker.key(queue, 2)) <= 60
    assert reader.take(queue) == {
        "queue": queue,
        "key": rpc_broker.key(queue, 1),
        "value": "forever",
    }
    assert reader.take(queue) == {"queue": queue, "key": rpc_broker.key(queue, 2), "value": "brief"}
    assert fault_of(lambda: reader.take(queue)).faultCode == 404


@STORAGE_MODES
def test_xmlrpc_and_rest_share_one_queue(rpc_broker, writer, reader, queue):
    produce = basic("writer", PASSWORD)
    key = request(
        rpc_broker.port, "POST", f"/q/{queue}", form={"value": "from rest"}, headers=produce
    ).text.strip()
    assert reader.take(queue) == {"queue": queue, "key": key, "value": "from rest"}
    key = writer.add(queue, "from xml-rpc")
    popped = rpc_broker.get(f"/q/{queue}").json()
    assert (popped["key"], popped["value"]) == (key, "from xml-rpc")


@STORAGE_MODES
def test_del_and_len(rpc_broker, writer, reader, queue):
    first = writer.add(queue, "one")
    second = writer.add(queue, "two")
    assert reader.len(queue) == 2
    assert getattr(writer, "del")(queue, first) is True
    assert getattr(writer, "del")(queue, first) is False
    assert reader.len(queue) == 1
    assert stored(rpc_broker, queue) == [second]
    assert reader.take(queue)["key"] == second
    assert reader.len(queue) == 0


@STORAGE_MODES
def test_queues_policy_and_status(rpc_broker, writer, reader, queue):
    writer.add(queue, "x")
    assert queue in reader.queues()
    assert reader.policy_get(queue) == "broadcast"
    assert writer.policy_set(queue, "roundrobin") == "roundrobin"
    assert reader.policy_get(queue) == "roundrobin"
    assert rpc_broker.get(f"/p/{queue}").json() == {"queue": queue, "value": "roundrobin"}
    assert reader.status(queue) == 1
    assert writer.stop(queue) == 0
    assert reader.status(queue) == 0
    assert rpc_broker.get(f"/control/{queue}").json()["status"] == {"queue": queue, "status": 0}
    assert writer.start(queue) == 1
    assert reader.status(queue) == 1


@STORAGE_MODES
def test_stats_is_the_stats_route(rpc_broker, writer, reader, queue):
    writer.add(queue, "a")
    writer.add(queue, "b")
    assert reader.stats(queue) == rpc_broker.get(f"/stats/{queue}").json()
    assert reader.stats(queue)["len"] == 2
    everything = reader.stats()
    rest = rpc_broker.get("/stats/").json()
    assert everything["queues"][queue] == rest["queues"][queue]
    assert everything["count"] == len(everything["queues"]) >= 1


def test_introspection(reader):
    assert set(reader.system.listMethods()) == EVERY_METHOD
    for name in EVERY_METHOD:
        assert name.split(".")[-1] in reader.system.methodHelp(name)
        signatures = reader.system.methodSignature(name)
        assert signatures and all(isinstance(s, list) and s for s in signatures)
    assert reader.system.methodSignature("add") == [
        ["string", "string", "string"],
        ["string", "string", "string", "int"],
        ["string", "string", "string", "int", "int"],
    ]
    assert fault_of(lambda: reader.system.methodHelp("nope")).faultCode == 400


@STORAGE_MODES
def test_multicall_runs_in_order_and_checks_each_call(rpc_broker, writer, reader, queue):
    batch = xmlrpc.client.MultiCall(writer)
    batch.add(queue, "one")
    batch.len(queue)
    batch.take(queue)
    batch.take(queue)
    results = batch()
    assert results[0] == rpc_broker.key(queue, 1)
    assert results[1] == 1
    assert results[2] == {"queue": queue, "key": rpc_broker.key(queue, 1), "value": "one"}
    with pytest.raises(xmlrpc.client.Fault) as empty:
        results[3]
    assert empty.value.faultCode == 404

    # the anonymous reader may len but not add: the add alone is refused
    anonymous = reader.system.multicall(
        [
            {"methodName": "add", "params": [queue, "sneaky"]},
            {"methodName": "len", "params": [queue]},
            {"methodName": "system.multicall", "params": [[]]},
            "not a struct",
        ]
    )
    assert anonymous[0]["faultCode"] == 401
    assert anonymous[1] == [0]
    assert anonymous[2]["faultCode"] == 400
    assert anonymous[3]["faultCode"] == 400
    assert stored(rpc_broker, queue) == []


# -- message values ----------------------------------------------------------------------


@STORAGE_MODES
def test_values_come_back_exactly(rpc_broker, writer, reader, queue):
    produce = basic("writer", PASSWORD)
    for value in ("a\r\nb", "tab\there & <tag>", "ünïcødé ✓", "007"):
        request(rpc_broker.port, "POST", f"/q/{queue}", form={"value": value}, headers=produce)
        assert reader.get(queue) == value
    # a character XML cannot carry arrives as base64 bytes
    request(rpc_broker.port, "POST", f"/q/{queue}", form={"value": "bell\x07"}, headers=produce)
    assert reader.get(queue) == xmlrpc.client.Binary(b"bell\x07")


@STORAGE_MODES
def test_non_text_values_are_stored_as_json(rpc_broker, writer, queue):
    writer.add(queue, 42)
    writer.add(queue, {"job": [1, 2]})
    writer.add(queue, xmlrpc.client.Binary("base64 text ✓".encode()))
    values = [rpc_broker.get(f"/q/{queue}").json()["value"] for _ in range(3)]
    assert values == ["42", '{"job": [1, 2]}', "base64 text ✓"]


# -- faults ------------------------------------------------------------------------------

BAD_CALLS = [
    ("add", ("bad name", "v"), 400, "invalid queue name"),
    ("add", ("{q}", "v", 0), 400, "ttl"),
    ("add", ("{q}", "v", "soon"), 400, "ttl"),
    ("add", ("{q}",), 400, "add takes 2 or 3 or 4 argument(s), not 1"),
    ("add", ("{q}", "v", 0, -1), 400, "delay must be a whole number"),
    ("set", ("{q}", "v", 5), 400, "set takes 2 argument(s), not 3"),
    ("policy_set", ("{q}", "fifo"), 400, "invalid policy"),
    ("del", ("{q}", "other:1"), 400, "is not a message key of queue"),
    ("len", (), 400, "len takes 1 argument(s), not 0"),
    ("add", ("{q}", None), 400, "cannot store"),
    ("nope", (), -32601, "unknown method 'nope'"),
    ("take", ("{q}",), 404, "is empty"),
]


@pytest.mark.parametrize(("method", "args", "code", "text"), BAD_CALLS)
def test_bad_calls_are_faults_and_store_nothing(rpc_broker, queue, method, args, code, text):
    server = xmlrpc.client.ServerProxy(
        f"http://writer:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{rpc_broker.port}/xmlrpc",
        allow_none=True,
    )
    args = tuple(a.format(q=queue) if isinstance(a, str) else a for a in args)
    fault = fault_of(lambda: getattr(server, method)(*args))
    assert fault.faultCode == code
    assert text in fault.faultString
    assert stored(rpc_broker, queue) == []
    assert "bad name" not in rpc_broker.redis("SMEMBERS", "QUEUESET")


def raw_post(broker: Broker, body: bytes, path: str = "/xmlrpc"):
    response = request(broker.port, "POST", path, body=body, headers={"Content-Type": "text/xml"})
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/xml")
    with pytest.raises(xmlrpc.client.Fault) as caught:
        xmlrpc.client.loads(response.body)
    return caught.value


def test_malformed_requests_are_faults_not_error_pages(rpc_broker):
    for body in (b"", b"<methodCall><methodName>len", b"not xml at all", b"\xff\xfe<x/>"):
        assert raw_post(rpc_broker, body).faultCode == -32700, body
    response = xmlrpc.client.dumps(("a result",), methodresponse=True).encode()
    assert raw_post(rpc_broker, response).faultCode == -32600
    fault = xmlrpc.client.dumps(xmlrpc.client.Fault(1, "x"), methodresponse=True).encode()
    assert raw_post(rpc_broker, fault, path="/RPC2").faultCode == -32600
    unknown_type = b"<methodCall><methodName>len</methodName><params><param><value><blob/>"
    unknown_type += b"</value></param></params></methodCall>"
    assert raw_post(rpc_broker, unknown_type).faultCode == -32700
    # only POST: a GET is answered like any other route that does not take it
    assert rpc_broker.get("/xmlrpc").status == 405


def test_access_is_checked_per_method(rpc_broker, queue):
    anonymous = proxy(rpc_broker)
    for call in (
        lambda: anonymous.set(queue, "v"),
        lambda: anonymous.add(queue, "v"),
        lambda: getattr(anonymous, "del")(queue, f"{queue}:1"),
        lambda: anonymous.policy_set(queue, "roundrobin"),
        lambda: anonymous.stop(queue),
        lambda: anonymous.start(queue),
    ):
        fault = fault_of(call)
        assert fault.faultCode == 401
        assert "rest:producer" in fault.faultString
    wrong = proxy(rpc_broker, user="writer", password="wrong")
    assert fault_of(lambda: wrong.add(queue, "v")).faultCode == 401
    assert stored(rpc_broker, queue) == []
    assert rpc_broker.redis("EXISTS", f"{queue}:queuepolicy", f"queuestat::{queue}") == 0

    # 127.0.0.3 is refused as a consumer, but may produce with the password
    refused = proxy(rpc_broker, user="writer", source="127.0.0.3")
    for call in (
        lambda: refused.get(queue),
        lambda: refused.take(queue),
        lambda: refused.len(queue),
        lambda: refused.queues(),
        lambda: refused.policy_get(queue),
        lambda: refused.status(queue),
        lambda: refused.stats(),
        lambda: refused.system.listMethods(),
    ):
        fault = fault_of(call)
        assert (fault.faultCode, fault.faultString) == (
            403,
            "access from 127.0.0.3 is not allowed (rest:consumer)",
        )
    assert refused.add(queue, "allowed") == f"{queue}:1"
    # a multicall is checked call by call: the producer's add goes, the consumer's len not
    batch = refused.system.multicall(
        [
            {"methodName": "add", "params": [queue, "in a batch"]},
            {"methodName": "len", "params": [queue]},
        ]
    )
    assert batch[0] == [f"{queue}:2"]
    assert batch[1]["faultCode"] == 403
    assert "XML-RPC len refused for 127.0.0.3" in rpc_broker.log()


# -- values JSON cannot hold ------------------------------------------------------------

TOO_DEEP = "JSON nested too deeply"


def rpc(broker) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{broker.port}/xmlrpc")


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


# -- with the rest of the broker -------------------------------------------------------


@STORAGE_MODES
def test_an_xmlrpc_add_wakes_streaming_consumers_like_a_post(rpc_broker, writer, queue):
    stream = HttpStream(rpc_broker.port, queue).start()
    try:
        wait_for(
            lambda: rpc_broker.get(f"/stats/{queue}").json()["consumers"] == 1,
            10,
            what="the COMET consumer",
        )
        latencies = []
        for i in range(5):
            started = time.monotonic()
            key = writer.add(queue, f"wake up {i}")
            assert stream.next_message(10) == {"key": key, "value": f"wake up {i}"}
            latencies.append(time.monotonic() - started)
        # woken at once (pub/sub), not found by the slow safety sweep (every 5 s)
        assert sorted(latencies)[2] < 2.0, latencies
        key = writer.set(queue, "again")
        assert stream.next_message(10) == {"key": key, "value": "again"}
    finally:
        stream.close()


@STORAGE_MODES
def test_keys_of_another_type_are_fault_409_like_rest(rpc_broker, reader, queue):
    list_key = f"{stem(rpc_broker, queue)}:queue"
    # something that is not RestMQ wrote a string where the queue's list belongs
    store_command(rpc_broker, "SET", list_key, "not a list")
    logged = len(rpc_broker.log())
    try:
        for call in (lambda: reader.take(queue), lambda: reader.get(queue)):
            fault = fault_of(call)
            assert fault.faultCode == 409
            assert "a Redis key of this queue holds another kind of value" in fault.faultString
        assert rpc_broker.get(f"/q/{queue}").status == 409, "the same answer as REST"
        assert store_command(rpc_broker, "GET", list_key) == "not a list", "left as it was"
        assert "XML-RPC call failed" not in rpc_broker.log()[logged:], "not an internal error"
    finally:
        store_command(rpc_broker, "DEL", list_key)


def test_storage_outage_is_fault_503(broker_factory, valkey_factory, queue):
    server = valkey_factory()
    broker = broker_factory("--redis-host", "127.0.0.1", "--redis-port", str(server.port))
    rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{broker.port}/xmlrpc")
    assert rpc.add(queue, "before") == f"{queue}:1"
    server.stop()
    started = time.monotonic()
    fault = fault_of(lambda: rpc.add(queue, "during"))
    assert fault.faultCode == 503
    assert time.monotonic() - started < 2.5
    assert fault_of(lambda: rpc.len(queue)).faultCode == 503


@STORAGE_MODES
def test_the_example_script_runs(shared_broker):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "test_xmlrpc.py"),
            f"http://127.0.0.1:{shared_broker.port}/xmlrpc",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-> 'tuna-boy'" in out
    assert "Fault 404" in out
    assert "Fault 400" in out
    assert "queues() has the queue" in out and "-> True" in out
    for method in EVERY_METHOD:
        assert method in out, method
