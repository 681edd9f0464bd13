"""Answers a fuzzer never provokes are as restmq/openapi.json describes them: a busy
broker, storage that fails (503) or loses a write's answer (504), refusals before any
route (400, 405, 411, 413, 431, 505), /health when storage is down, and /stats/ as
Server-Sent Events. Each answer is checked against the document's schema and headers."""

from __future__ import annotations

import json
import re

from tests import support as wire
from tests.support import (
    openapi_at,
    openapi_document,
    openapi_response,
    openapi_validator,
    wait_for,
)

MiB = 1024 * 1024
JSON_BODY = {"Content-Type": "application/json"}
METHODS_WITH_BODY = {"post", "put", "patch"}


def documented(path: str, method: str, status: int) -> tuple[str, ...]:
    where = openapi_response(path, method, str(status))
    assert where is not None, f"{method.upper()} {path} does not document {status}"
    return where


def assert_as_documented(where: tuple[str, ...], status: int, headers: dict, body: bytes) -> dict:
    """The answer's JSON body fits the schema documented at ``where``, and the headers it
    documents as required are there and fit theirs; the body, parsed."""
    answer = openapi_at(*where)
    assert headers["content-type"].split(";")[0] in answer["content"], (status, headers)
    payload = json.loads(body)
    openapi_validator(*where, "content", "application/json", "schema").validate(payload)
    for name, header in answer.get("headers", {}).items():
        if "$ref" in header:
            header = openapi_at("components", "headers", header["$ref"].rsplit("/", 1)[1])
        value = headers.get(name.lower())
        if header.get("required"):
            assert value is not None, f"{status} lacks its documented {name} header"
        if value is not None:
            pattern = header["schema"].get("pattern")
            assert pattern is None or re.search(pattern, value), (name, value)
    return payload


def resolved_response(answer: dict) -> dict:
    if "$ref" in answer:
        return openapi_at("components", "responses", answer["$ref"].rsplit("/", 1)[1])
    return answer


def operations():
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method, operation


# -- what every operation must document ---------------------------------------------------


def test_every_operation_that_takes_a_body_documents_the_busy_503():
    for path, method, operation in operations():
        if method not in METHODS_WITH_BODY:
            continue
        answer = operation["responses"].get("503")
        assert answer is not None, f"{method.upper()} {path} does not document 503"
        examples = resolved_response(answer)["content"]["application/json"]["examples"]
        errors = [example["value"]["error"] for example in examples.values()]
        assert any(error.startswith("broker busy: ") for error in errors), (path, method)


def test_every_documented_503_says_when_to_retry():
    for path, method, operation in operations():
        answer = operation["responses"].get("503")
        if answer is not None:
            headers = resolved_response(answer).get("headers", {})
            assert "Retry-After" in headers, f"{method.upper()} {path}: 503 without Retry-After"


# -- answers that need a broker in trouble -------------------------------------------------


def test_a_busy_broker_answers_the_documented_503(broker_factory, queue):
    broker = broker_factory("--max-buffered", str(16 * MiB), "--max-body", str(8 * MiB))
    head = (
        f"POST /q/{queue} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {7 * MiB}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    holders = []
    try:
        for _ in range(2):  # 14 MiB of the 16 are promised to bodies still to come
            sock = wire.connect(broker.port)
            holders.append(sock)
            sock.sendall(head)
            assert wire.Reader(sock).read_head()[1] == 100
        with wire.connect(broker.port) as sock:
            sock.sendall(head)
            answer = wire.Reader(sock).read_response("POST")
    finally:
        for sock in holders:
            sock.close()
    assert answer.status == 503
    where = documented("/q/{queue}", "post", 503)
    error = assert_as_documented(where, 503, answer.headers, answer.body)["error"]
    assert error.startswith("broker busy: ")


def test_storage_failures_are_answered_as_documented(broker_factory, valkey_factory, queue):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port), "--redis-timeout", "0.5")
    assert broker.post(f"/q/{queue}", value="first").status == 200
    writes = [
        ("/q/{queue}", "post", lambda: broker.post(f"/q/{queue}", value="maybe")),
        ("/q/{queue}", "delete", lambda: broker.request("DELETE", f"/q/{queue}")),
        ("/p/{queue}", "post", lambda: broker.post(f"/p/{queue}", policy="roundrobin")),
        ("/control/{queue}", "post", lambda: broker.post(f"/control/{queue}", status="stop")),
        ("/queue", "post", lambda: broker.request(
            "POST", "/queue", body=json.dumps({"cmd": "add", "queue": queue, "value": "v"}),
            headers=JSON_BODY)),
    ]  # fmt: skip
    for path, method, send in writes:
        # Redis holds the write, so its answer comes after --redis-timeout: state unknown.
        assert server.command("CLIENT", "PAUSE", "1500", "WRITE") == "OK"
        answer = send()
        assert answer.status == 504, (path, method, answer.status, answer.body)
        error = assert_as_documented(
            documented(path, method, 504), 504, answer.headers, answer.body
        )["error"]
        assert error.startswith("stored state unknown: ")
        assert "retry-after" not in answer.headers  # a blind retry could store twice
        server.command("CLIENT", "UNPAUSE")

    server.stop()
    wait_for(lambda: broker.get("/health").status == 503, timeout=10, what="the outage")
    health = broker.get("/health")
    assert_as_documented(documented("/health", "get", 503), 503, health.headers, health.body)
    head = broker.request("HEAD", "/health")
    assert head.status == 503 and head.body == b""
    assert "Retry-After" in openapi_at(*documented("/health", "head", 503), "headers")
    assert head.headers["retry-after"].isdigit()
    pop = broker.get(f"/q/{queue}")
    assert pop.status == 503
    assert_as_documented(documented("/q/{queue}", "get", 503), 503, pop.headers, pop.body)


# -- refusals before any route ---------------------------------------------------------------


def test_refusals_before_any_route_are_the_documented_shared_answers(shared_broker, queue):
    port = shared_broker.port
    big_header = "X-Padding: " + "x" * (70 * 1024) + "\r\n"
    refusals = [
        (431, "RequestHeadTooLarge", f"GET /q/{queue} HTTP/1.1\r\nHost: t\r\n{big_header}\r\n"),
        (505, "HttpVersionNotSupported", "GET / HTTP/2.0\r\nHost: t\r\n\r\n"),
        (400, "BadRequest", f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\n"
                            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
        (411, "LengthRequired", f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        (413, "PayloadTooLarge", f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\n"
                                 f"Content-Length: {1 << 40}\r\nExpect: 100-continue\r\n\r\n"),
        (405, "MethodNotAllowed", "PUT /stats/ HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"),
    ]  # fmt: skip
    for status, name, data in refusals:
        with wire.connect(port) as sock:
            sock.sendall(data.encode())
            answer = wire.Reader(sock).read_response()
        assert answer.status == status, (name, answer.status, answer.body)
        assert_as_documented(("components", "responses", name), status, answer.headers, answer.body)
    assert shared_broker.redis("EXISTS", f"{queue}:queue") == 0


# -- /stats/ as Server-Sent Events ----------------------------------------------------------


def test_the_stats_event_stream_is_as_documented(shared_broker, queue):
    assert shared_broker.post(f"/q/{queue}", value="counted").status == 200
    ok = openapi_at(*documented("/stats/", "get", 200))
    with wire.connect(shared_broker.port) as sock:
        sock.sendall(b"GET /stats/ HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        reader = wire.Reader(sock)
        _, status, headers, _ = reader.read_head()
        assert status == 200
        assert headers["content-type"].split(";")[0] == "text/event-stream"
        assert "text/event-stream" in ok["content"]
        assert headers["cache-control"] == "no-cache"
        event = re.compile(rb"event: stats\ndata: (\{.*?\})\n\n")
        raw = reader.buffer  # what came with the head
        while not event.search(raw):
            data = sock.recv(65536)
            assert data, "the stream ended before its first stats event"
            raw += data
    figures = json.loads(event.search(raw).group(1))
    openapi_validator("components", "schemas", "StatsEvent").validate(figures)
    assert figures["queues"][queue]["len"] == 1


# -- 507: a full queue, a full store --------------------------------------------------------


def test_a_full_queue_and_a_full_store_are_answered_as_documented(
    broker_factory, valkey_factory, queue
):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port))
    assert broker.post(f"/p/{queue}", max_length="1").status == 200
    policy = broker.get(f"/p/{queue}")
    assert_as_documented(documented("/p/{queue}", "get", 200), 200, policy.headers, policy.body)
    assert broker.post(f"/q/{queue}", value="only").status == 200
    adds = [
        ("/q/{queue}", lambda: broker.post(f"/q/{queue}", value="more")),
        ("/", lambda: broker.post("/", queue=queue, value="more")),
        ("/queue", lambda: broker.request(
            "POST", "/queue", body=json.dumps({"cmd": "add", "queue": queue, "value": "v"}),
            headers=JSON_BODY)),
    ]  # fmt: skip
    for path, send in adds:
        answer = send()
        assert answer.status == 507, (path, answer.status, answer.body)
        where = documented(path, "post", 507)
        error = assert_as_documented(where, 507, answer.headers, answer.body)["error"]
        assert error == f"queue {queue} is full (max_length 1)"

    assert server.command("CONFIG", "SET", "maxmemory", "1") == "OK"  # far below what is used
    writes = [
        ("/q/{queue}", lambda: broker.post(f"/q/{queue}-other", value="more")),
        ("/p/{queue}", lambda: broker.post(f"/p/{queue}", policy="roundrobin")),
        ("/control/{queue}", lambda: broker.post(f"/control/{queue}", status="stop")),
    ]
    for path, send in writes:
        answer = send()
        assert answer.status == 507, (path, answer.status, answer.body)
        where = documented(path, "post", 507)
        assert assert_as_documented(where, 507, answer.headers, answer.body) == {
            "error": "storage is full"
        }
