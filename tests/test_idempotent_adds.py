"""Idempotent adds (the ``Idempotency-Key`` header, and ``"idempotency_key"`` in the JSON
protocol): a repeated add answers as the first did and stores nothing; another payload
with the key is a 422; one key, many concurrent requests, one message."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import support as wire
from tests.support import (
    JSON_TYPE,
    STORAGE_MODES,
    TEXT_TYPE,
    assert_error,
    command,
    take_all,
)

pytestmark = STORAGE_MODES

REPLAYED = "idempotent-replayed"


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **headers}


def post_form(broker, path: str, key: str, **form):
    return broker.request("POST", path, form=form, headers=keyed(key))


def post_body(broker, path: str, key: str, payload):
    headers = keyed(key, **{"Content-Type": "application/json"})
    return broker.request("POST", path, body=json.dumps(payload), headers=headers)


def values_in(broker, queue: str) -> list[str]:
    return [message["value"] for message in take_all(broker, queue)]


def assert_replay(first, again) -> None:
    """The same answer, status, body and type, and only the replay says it is one."""
    assert REPLAYED not in first.headers
    assert again.headers.get(REPLAYED) == "true"
    assert (again.status, again.body, again.headers["content-type"]) == (
        first.status,
        first.body,
        first.headers["content-type"],
    )


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(
            lambda b, q, k: post_form(b, f"/q/{q}", k, value="hello", ttl="60"), id="q-form"
        ),
        pytest.param(lambda b, q, k: post_body(b, f"/q/{q}", k, {"value": "hello"}), id="q-json"),
        pytest.param(lambda b, q, k: post_form(b, "/", k, queue=q, value="hello"), id="index-form"),
    ],
)
def test_a_repeated_single_add_answers_the_same_key_and_stores_once(shared_broker, queue, send):
    first = send(shared_broker, queue, '"8e03978e-40d5"')
    assert (first.status, first.text) == (200, shared_broker.key(queue, 1) + "\r\n")
    assert first.headers["content-type"] == TEXT_TYPE
    again = send(shared_broker, queue, '"8e03978e-40d5"')
    assert_replay(first, again)
    assert values_in(shared_broker, queue) == ["hello"]


def test_a_repeated_batch_answers_the_same_keys_and_stores_once(shared_broker, queue):
    batch = {"values": ["a", {"b": 2}, "c"], "ttl": 60}
    first = post_body(shared_broker, f"/q/{queue}", "batch-1", batch)
    assert first.status == 200 and first.headers["content-type"] == JSON_TYPE
    assert first.json() == [shared_broker.key(queue, n) for n in (1, 2, 3)]
    again = post_body(shared_broker, f"/q/{queue}", "batch-1", batch)
    assert_replay(first, again)
    assert values_in(shared_broker, queue) == ["a", '{"b": 2}', "c"]


def test_a_quoted_key_and_the_same_key_bare_are_one_key(shared_broker, queue):
    first = post_form(shared_broker, f"/q/{queue}", '"a\\"b\\\\c"', value="x")
    again = post_form(shared_broker, f"/q/{queue}", 'a"b\\c', value="x")
    assert_replay(first, again)


def test_the_key_on_the_index_route_and_the_queue_route_is_the_queues(shared_broker, queue):
    first = post_form(shared_broker, "/", "shared-key", queue=queue, value="x")
    again = post_form(shared_broker, f"/q/{queue}", "shared-key", value="x")
    assert_replay(first, again)
    assert values_in(shared_broker, queue) == ["x"]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"value": "other"}, id="value"),
        pytest.param({"value": "same", "ttl": 60}, id="ttl"),
        pytest.param({"values": ["same", "more"]}, id="values"),
    ],
)
def test_the_key_with_another_payload_is_422_and_stores_nothing(shared_broker, queue, other):
    first = post_body(shared_broker, f"/q/{queue}", "k-422", {"value": "same"})
    assert first.status == 200
    refused = post_body(shared_broker, f"/q/{queue}", "k-422", other)
    error = assert_error(refused, 422, "the Idempotency-Key 'k-422' was used on queue")
    assert "another payload" in error
    assert REPLAYED not in refused.headers
    assert values_in(shared_broker, queue) == ["same"]


def test_a_key_belongs_to_one_queue(shared_broker, queue):
    other = queue + "-other"
    first = post_form(shared_broker, f"/q/{queue}", "per-queue", value="x")
    second = post_form(shared_broker, f"/q/{other}", "per-queue", value="x")
    assert REPLAYED not in first.headers and REPLAYED not in second.headers
    assert first.text == shared_broker.key(queue, 1) + "\r\n"
    assert second.text == shared_broker.key(other, 1) + "\r\n"
    assert values_in(shared_broker, queue) == values_in(shared_broker, other) == ["x"]


def test_fifty_concurrent_adds_with_one_key_store_one_message(shared_broker, queue):
    start = threading.Barrier(50)

    def add(_: int):
        start.wait(10)
        return post_form(shared_broker, f"/q/{queue}", "fifty", value="once")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(add, range(50)))
    assert {(a.status, a.body) for a in answers} == {
        (200, (shared_broker.key(queue, 1) + "\r\n").encode())
    }
    assert sum(REPLAYED not in a.headers for a in answers) == 1
    assert values_in(shared_broker, queue) == ["once"]


@pytest.mark.parametrize(
    "header",
    [
        pytest.param('""', id="empty"),
        pytest.param('"' + "k" * 256 + '"', id="too-long"),
        pytest.param('"a b"', id="space"),
        pytest.param('"abc', id="unterminated"),
        pytest.param('"a\\x"', id="bad-escape"),
        pytest.param('"abc";p=1', id="parameters"),
        pytest.param("a b", id="bare-space"),
    ],
)
def test_a_malformed_key_is_400_and_stores_nothing(shared_broker, queue, header):
    refused = post_form(shared_broker, f"/q/{queue}", header, value="x")
    assert_error(refused, 400, "")
    assert "Idempotency-Key" in refused.json()["error"]
    assert take_all(shared_broker, queue) == []


def test_a_key_outside_visible_ascii_and_two_keys_are_400(shared_broker, queue):
    for extra in (
        b'Idempotency-Key: "caf\xc3\xa9"\r\n',
        b"Idempotency-Key: a\r\nIdempotency-Key: b\r\n",
    ):
        request = (
            f"POST /q/{queue} HTTP/1.1\r\nHost: test\r\n".encode()
            + extra
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            + b"Content-Length: 7\r\n\r\nvalue=x"
        )
        (answer,) = wire.exchange(shared_broker.port, request, methods=["POST"])
        assert answer.status == 400, answer.body
        assert b"Idempotency-Key" in answer.body
    assert take_all(shared_broker, queue) == []


def test_the_json_protocol_add_replays_with_a_replayed_field(shared_broker, queue):
    add = {"cmd": "add", "queue": queue, "value": "v", "idempotency_key": "json-1"}
    first = command(shared_broker, add)
    assert first.json() == {"queue": queue, "value": "v", "key": shared_broker.key(queue, 1)}
    assert REPLAYED not in first.headers
    again = command(shared_broker, add)
    assert again.json() == {**first.json(), "replayed": True}
    assert again.headers.get(REPLAYED) == "true"
    refused = command(shared_broker, {**add, "value": "w"})
    assert_error(refused, 422, "the Idempotency-Key 'json-1' was used on queue")
    bad = command(shared_broker, {**add, "idempotency_key": "no spaces allowed"})
    assert_error(bad, 400, "an Idempotency-Key is 1 to 255 visible ASCII characters")
    assert values_in(shared_broker, queue) == ["v"]


def test_adds_without_a_key_are_never_replayed(shared_broker, queue):
    for n in (1, 2):
        answer = shared_broker.post(f"/q/{queue}", value="same")
        assert answer.text == shared_broker.key(queue, n) + "\r\n"
        assert REPLAYED not in answer.headers
