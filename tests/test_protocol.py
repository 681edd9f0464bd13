"""The RestMQ protocol (docs/protocol.md), end to end.

Every answer is checked byte for byte against a real `twistd restmq` over real sockets.
Streaming routes (/c, /ws) have their own tests.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.support import (
    JSONP_TYPE,
    STORAGE_MODES,
    TEXT_TYPE,
    assert_answer,
    assert_error,
    command,
    jsonp,
    line,
    nothing_kept,
    post_json,
    post_value,
    redis_field,
    stem,
    store_command,
)

# -- POST / and GET / (the original's all-in-one route) ----------------------


@STORAGE_MODES
def test_post_root_answers_the_bare_key_and_get_root_pops_it(shared_broker, queue):
    b = shared_broker
    response = b.post("/", queue=queue, value="foobar")
    assert_answer(response, f"{b.key(queue, 1)}\r\n".encode(), content_type=TEXT_TYPE)
    assert b.post("/", queue=queue, msg="from msg").text == f"{b.key(queue, 2)}\r\n"
    response = b.get(f"/?queue={queue}")
    assert_answer(response, line({"key": b.key(queue, 1), "value": "foobar", "count": 0}))
    assert b.get(f"/?queue={queue}").json()["value"] == "from msg"
    assert_error(b.get(f"/?queue={queue}"), 404)


@STORAGE_MODES
def test_root_with_jsonp(shared_broker, queue):
    b = shared_broker
    response = b.post("/?callback=cb", queue=queue, value="v")
    assert_answer(response, f'cb("{b.key(queue, 1)}");\r\n'.encode(), content_type=JSONP_TYPE)
    response = b.get(f"/?queue={queue}&callback=app.got")
    assert_answer(
        response,
        jsonp("app.got", {"key": b.key(queue, 1), "value": "v", "count": 0}),
        content_type=JSONP_TYPE,
    )


def test_get_root_without_queue_redirects_to_the_dashboard(shared_broker):
    response = shared_broker.get("/")
    assert response.status == 302
    assert response.headers["location"] == "/static/index.html"


@STORAGE_MODES
def test_post_root_needs_a_queue_and_a_value(shared_broker, queue):
    b = shared_broker
    assert_error(b.post("/", value="x"), 400, "a queue name is required")
    assert_error(b.post("/", queue=queue), 400, "a message is required")
    assert_error(b.post("/", queue=queue, value=""), 400, "a message is required")
    assert b.get(f"/stats/{queue}").json()["len"] == 0


@STORAGE_MODES
def test_post_root_prefers_value_and_q_route_prefers_msg_as_the_original(shared_broker, queue):
    b = shared_broker
    b.post("/", queue=queue, value="the value", msg="the msg")
    b.post(f"/q/{queue}", value="the value", msg="the msg")
    popped = b.get(f"/q/{queue}?n=2").json()
    assert [m["value"] for m in popped] == ["the value", "the msg"]


# -- /q/<queue> ---------------------------------------------------------------


@STORAGE_MODES
def test_post_and_get_q_byte_for_byte(shared_broker, queue):
    b = shared_broker
    response = b.post(f"/q/{queue}", value="foobar")
    assert_answer(response, f"{b.key(queue, 1)}\r\n".encode(), content_type=TEXT_TYPE)
    assert b.post(f"/q/{queue}", msg="second").text == f"{b.key(queue, 2)}\r\n"
    response = b.get(f"/q/{queue}")
    assert_answer(response, line({"key": b.key(queue, 1), "value": "foobar", "count": 0}))
    assert "etag" not in response.headers  # a pop must never turn into a 304
    assert b.get(f"/q/{queue}").json() == {"key": b.key(queue, 2), "value": "second", "count": 0}


@STORAGE_MODES
def test_get_q_on_an_empty_queue_is_204_with_no_body(shared_broker, queue):
    response = shared_broker.get(f"/q/{queue}")
    assert response.status == 204
    assert response.body == b""
    assert "content-length" not in response.headers
    assert "content-type" not in response.headers
    assert "transfer-encoding" not in response.headers


@STORAGE_MODES
def test_q_routes_with_jsonp(shared_broker, queue):
    b = shared_broker
    response = b.post(f"/q/{queue}?callback=cb", value="v")
    assert_answer(response, f'cb("{b.key(queue, 1)}");\r\n'.encode(), content_type=JSONP_TYPE)
    response = b.get(f"/q/{queue}?callback=cb")
    assert_answer(
        response, jsonp("cb", {"key": b.key(queue, 1), "value": "v", "count": 0}), 200, JSONP_TYPE
    )
    b.post(f"/q/{queue}", value="w")
    response = b.request("DELETE", f"/q/{queue}?callback=$.done")
    assert_answer(response, jsonp("$.done", {"queue": queue, "status": 1}), 200, JSONP_TYPE)
    response = post_json(b, f"/q/{queue}?callback=cb", {"values": ["a", "b"]})
    assert_answer(response, jsonp("cb", [b.key(queue, 3), b.key(queue, 4)]), 200, JSONP_TYPE)
    response = b.get(f"/q/{queue}?n=5&callback=cb")
    expected = [
        {"key": b.key(queue, 3), "value": "a", "count": 0},
        {"key": b.key(queue, 4), "value": "b", "count": 0},
    ]
    assert_answer(response, jsonp("cb", expected), 200, JSONP_TYPE)


@STORAGE_MODES
def test_messages_come_out_oldest_first(shared_broker, queue):
    b = shared_broker
    keys = [post_value(b, queue, f"m{i}") for i in range(5)]
    assert keys == [b.key(queue, i) for i in range(1, 6)]
    popped = [b.get(f"/q/{queue}").json()["key"] for _ in range(5)]
    assert popped == keys


@STORAGE_MODES
def test_delete_purges_the_queue(shared_broker, queue):
    b = shared_broker
    for i in range(3):
        post_value(b, queue, f"m{i}")
    response = b.request("DELETE", f"/q/{queue}")
    assert_answer(response, line({"queue": queue, "status": 1}))
    assert b.get(f"/q/{queue}").status == 204
    assert b.get(f"/stats/{queue}").json()["len"] == 0
    # nothing left to purge: status 0, as the original's DEL count
    assert b.request("DELETE", f"/q/{queue}").body == line({"queue": queue, "status": 0})
    # numbering goes on after a purge
    assert post_value(b, queue, "after") == b.key(queue, 4)


@STORAGE_MODES
def test_q_listing_page_links_every_queue(shared_broker, queue):
    b = shared_broker
    other = queue + ".other@x:y"
    post_value(b, queue, "x")
    post_value(b, other, "y")
    response = b.get("/q/")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=UTF-8"
    page = response.text
    assert "<title>Queues available for REST</title>" in page
    assert f'<li><a href="/q/{queue}">/q/{queue}</a></li>' in page
    assert f'<a href="/q/{queue}.other%40x%3Ay">/q/{other}</a>' in page
    assert '<link rel="stylesheet" href="/static/restmq.css">' in page
    assert b.get("/static/restmq.css").status == 200


def test_q_listing_page_on_a_fresh_broker_says_there_are_none(broker_factory):
    broker = broker_factory()
    page = broker.get("/q/").text
    assert "No queues yet" in page
    assert "<li>" not in page


# -- JSON bodies and batch pop ------------------------------------------


@STORAGE_MODES
def test_json_body_with_value_answers_the_key(shared_broker, queue):
    b = shared_broker
    response = post_json(b, f"/q/{queue}", {"value": "from json"})
    assert_answer(response, f"{b.key(queue, 1)}\r\n".encode(), content_type=TEXT_TYPE)
    response = post_json(b, f"/q/{queue}", {"value": {"nested": [1, "two", None]}})
    assert response.text == f"{b.key(queue, 2)}\r\n"
    popped = b.get(f"/q/{queue}?n=2").json()
    assert popped[0]["value"] == "from json"
    # a JSON value that is not text is stored as its JSON text
    assert popped[1]["value"] == '{"nested": [1, "two", null]}'
    assert json.loads(popped[1]["value"]) == {"nested": [1, "two", None]}


@STORAGE_MODES
def test_json_body_with_values_is_one_batch_answering_the_keys(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "before")
    values = ["a", "ü😀", 7, {"k": "v"}, [1, 2]]
    response = post_json(b, f"/q/{queue}", {"values": values})
    keys = [b.key(queue, n) for n in range(2, 7)]
    assert_answer(response, line(keys))
    popped = b.get(f"/q/{queue}?n=10").json()
    assert [m["key"] for m in popped] == [b.key(queue, 1), *keys]
    assert [m["value"] for m in popped[1:]] == ["a", "ü😀", "7", '{"k": "v"}', "[1, 2]"]


@STORAGE_MODES
def test_json_body_with_ttl(shared_broker, queue):
    b = shared_broker
    post_json(b, f"/q/{queue}", {"value": "short", "ttl": 30})
    post_json(b, f"/q/{queue}", {"values": ["x", "y"], "ttl": 60})
    post_json(b, f"/q/{queue}?ttl=45", {"value": "query ttl"})
    ttls = [store_command(b, "TTL", b.key(queue, n)) for n in range(1, 5)]
    assert 0 < ttls[0] <= 30
    assert 30 < ttls[1] <= 60 and 30 < ttls[2] <= 60
    assert 30 < ttls[3] <= 45


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"value": "x", "values": ["y"]},
        {"values": []},
        {"values": "not a list"},
        {"value": None},
        {"values": ["ok", None]},
        ["value", "x"],
        "just a string",
        {"value": "x", "ttl": 0},
        {"value": "x", "ttl": "soon"},
        {"values": ["v"] * 1001},
    ],
    ids=lambda p: json.dumps(p)[:40],
)
def test_bad_json_bodies_are_400_and_store_nothing(shared_broker, queue, payload):
    b = shared_broker
    assert_error(post_json(b, f"/q/{queue}", payload), 400)
    assert nothing_kept(b, queue)


def test_malformed_json_body_is_400(shared_broker, queue):
    b = shared_broker
    for raw in (b"{bad", b"", b'{"value": "x"', b"\xff\xfe"):
        assert_error(post_json(b, f"/q/{queue}", None, raw=raw), 400, "malformed JSON body")
    assert b.get(f"/stats/{queue}").json()["len"] == 0


@STORAGE_MODES
def test_batch_pop_returns_up_to_n_oldest_first(shared_broker, queue):
    b = shared_broker
    for i in range(5):
        post_value(b, queue, f"m{i}")
    response = b.get(f"/q/{queue}?n=3")
    expected = [{"key": b.key(queue, i + 1), "value": f"m{i}", "count": 0} for i in range(3)]
    assert_answer(response, line(expected))
    assert b.get(f"/q/{queue}?n=1").json() == [{"key": b.key(queue, 4), "value": "m3", "count": 0}]
    assert [m["value"] for m in b.get(f"/q/{queue}?n=1000").json()] == ["m4"]
    assert_answer(b.get(f"/q/{queue}?n=1000"), b"[]\r\n")


@STORAGE_MODES
def test_batch_pop_of_a_thousand(shared_broker, queue):
    b = shared_broker
    values = [f"v{i}" for i in range(1001)]
    for start in range(0, 1001, 500):
        post_json(b, f"/q/{queue}", {"values": values[start : start + 500]})
    first = b.get(f"/q/{queue}?n=1000").json()
    assert [m["value"] for m in first] == values[:1000]
    assert b.get(f"/q/{queue}?n=1000").json()[0]["value"] == "v1000"


# -- the JSON protocol: /queue and /queue/<name> ---------------------------------


def test_get_queue_redirects_to_the_help_page(shared_broker):
    response = shared_broker.get("/queue")
    assert response.status == 302
    assert response.headers["location"] == "/static/help.html"


@STORAGE_MODES
def test_json_protocol_add_get_take_del(shared_broker, queue):
    b = shared_broker
    response = command(b, {"cmd": "add", "queue": queue, "value": "oi"})
    assert_answer(response, line({"queue": queue, "value": "oi", "key": b.key(queue, 1)}))
    command(b, {"cmd": "add", "queue": queue, "value": "second"})
    # get peeks: the message stays, its peek count goes up
    expected = {"queue": queue, "value": "oi", "key": b.key(queue, 1), "count": 1}
    assert_answer(command(b, {"cmd": "get", "queue": queue}), line(expected))
    assert command(b, {"cmd": "get", "queue": queue}).json()["count"] == 2
    response = command(b, {"cmd": "take", "queue": queue})
    assert_answer(response, line({"queue": queue, "value": "oi", "key": b.key(queue, 1)}))
    response = command(b, {"cmd": "del", "queue": queue, "key": b.key(queue, 2)})
    assert_answer(response, line({"queue": queue, "key": b.key(queue, 2), "deleted": True}))
    response = command(b, {"cmd": "del", "queue": queue, "key": b.key(queue, 2)})
    assert response.json() == {"queue": queue, "key": b.key(queue, 2), "deleted": False}
    for cmd in ("get", "take"):
        assert_answer(command(b, {"cmd": cmd, "queue": queue}), line({"error": "empty queue"}))


@STORAGE_MODES
def test_json_protocol_msg_field_and_raw_json_body(shared_broker, queue):
    b = shared_broker
    response = command(b, {"cmd": "add", "queue": queue, "value": "via msg"}, field="msg")
    assert response.json()["key"] == b.key(queue, 1)
    response = post_json(b, "/queue", {"cmd": "take", "queue": queue})
    assert_answer(response, line({"queue": queue, "value": "via msg", "key": b.key(queue, 1)}))


@STORAGE_MODES
def test_json_protocol_path_names_the_queue_when_the_command_does_not(shared_broker, queue):
    b = shared_broker
    response = command(b, {"cmd": "add", "value": "routed"}, path=f"/queue/{queue}")
    assert response.json() == {"queue": queue, "value": "routed", "key": b.key(queue, 1)}
    response = post_json(b, f"/queue/{queue}", {"cmd": "take"})
    assert response.json()["value"] == "routed"
    # a queue named in the command wins over the path
    command(b, {"cmd": "add", "queue": queue + "b", "value": "x"}, path=f"/queue/{queue}")
    assert b.get(f"/stats/{queue}b").json()["len"] == 1


@STORAGE_MODES
def test_json_protocol_object_value_is_stored_as_its_json_text(shared_broker, queue):
    b = shared_broker
    value = {"user": "zé", "tags": ["a", "b"], "n": 1.5, "ok": True, "none": None}
    response = command(b, {"cmd": "add", "queue": queue, "value": value})
    # the answer echoes the value as sent
    assert response.json() == {"queue": queue, "value": value, "key": b.key(queue, 1)}
    assert store_command(b, "GET", b.key(queue, 1)) == json.dumps(value)
    command(b, {"cmd": "add", "queue": queue, "value": [1, [2]]})
    command(b, {"cmd": "add", "queue": queue, "value": 42})
    taken = [command(b, {"cmd": "take", "queue": queue}).json()["value"] for _ in range(3)]
    assert taken == [json.dumps(value), "[1, [2]]", "42"]


@STORAGE_MODES
def test_json_protocol_add_with_ttl(shared_broker, queue):
    b = shared_broker
    command(b, {"cmd": "add", "queue": queue, "value": "v", "ttl": 20})
    assert 0 < store_command(b, "TTL", b.key(queue, 1)) <= 20
    assert_error(command(b, {"cmd": "add", "queue": queue, "value": "v", "ttl": -5}), 400)


@STORAGE_MODES
@pytest.mark.parametrize(
    ("cmd", "error"),
    [
        ({"cmd": "nope", "queue": "q"}, "null resultset"),
        ({"cmd": "", "queue": "q"}, "the command has no"),
        ({"queue": "q"}, "the command has no"),
        (["add"], "a command is a JSON object"),
        ({"cmd": "add", "value": "x"}, "a queue name is required"),
        ({"cmd": "add", "queue": "bad name", "value": "x"}, "invalid queue name"),
        ({"cmd": "add", "queue": 5, "value": "x"}, "a queue name is required"),
        ({"cmd": "add", "queue": "q"}, "the add command needs a value"),
        ({"cmd": "add", "queue": "q", "value": None}, "the add command needs a value"),
        ({"cmd": "del", "queue": "q"}, "the del command needs the key"),
        ({"cmd": "del", "queue": "q", "key": "other:1"}, "'other:1' is not a message key"),
        ({"cmd": "del", "queue": "q", "key": "QUEUESET"}, "'QUEUESET' is not a message key"),
    ],
)
def test_json_protocol_errors_are_400(shared_broker, queue, cmd, error):
    b = shared_broker
    if isinstance(cmd, dict) and cmd.get("queue") == "q":
        cmd = dict(cmd, queue=queue)
    assert_error(command(b, cmd), 400, error)
    assert store_command(b, "EXISTS", f"{stem(b, queue)}:UUID") == 0


def test_json_protocol_malformed_commands_are_400(shared_broker):
    b = shared_broker
    assert_error(b.post("/queue", body="{not json"), 400, "malformed JSON command")
    assert_error(b.post("/queue"), 400, "send the command as form field body")
    assert_error(b.post("/queue", other="x"), 400, "send the command as form field body")
    assert_error(post_json(b, "/queue", None, raw=b"{oops"), 400, "malformed JSON body")


# -- /p/<queue> ---------------------------------------------------------------


@STORAGE_MODES
def test_policy_get_and_set(shared_broker, queue):
    b = shared_broker
    # unset: broadcast is what applies, and what we answer (the original said "unknown")
    assert_answer(b.get(f"/p/{queue}"), line({"queue": queue, "value": "broadcast"}))
    response = b.post(f"/p/{queue}", policy="roundrobin")
    assert_answer(response, b"OK\r\n", content_type=TEXT_TYPE)
    assert b.get(f"/p/{queue}").body == line({"queue": queue, "value": "roundrobin"})
    assert store_command(b, "GET", f"{stem(b, queue)}:queuepolicy") == "2"
    assert b.post(f"/p/{queue}", policy="broadcast").text == "OK\r\n"
    assert store_command(b, "GET", f"{stem(b, queue)}:queuepolicy") == "1"
    assert b.get(f"/p/{queue}").json()["value"] == "broadcast"


@STORAGE_MODES
def test_policy_with_jsonp(shared_broker, queue):
    b = shared_broker
    response = b.post(f"/p/{queue}?callback=cb", policy="roundrobin")
    assert_answer(response, b'cb("OK");\r\n', content_type=JSONP_TYPE)
    response = b.get(f"/p/{queue}?callback=cb")
    assert_answer(response, jsonp("cb", {"queue": queue, "value": "roundrobin"}), 200, JSONP_TYPE)


@STORAGE_MODES
def test_invalid_policy_is_400_and_changes_nothing(shared_broker, queue):
    b = shared_broker
    b.post(f"/p/{queue}", policy="roundrobin")
    assert_error(b.post(f"/p/{queue}", policy="random"), 400, "invalid policy 'random'")
    assert_error(b.post(f"/p/{queue}"), 400, "policy is required")
    assert b.get(f"/p/{queue}").json()["value"] == "roundrobin"


# -- /control/<queue> and /control/ ------------------------------------------------


@STORAGE_MODES
def test_control_get_and_post(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "x")
    response = b.get(f"/control/{queue}")
    redis = response.json()["redis"]
    assert redis_field(b).fullmatch(redis), redis
    expected = {"redis": redis, "queue": queue, "status": {"queue": queue, "status": 1}}
    assert_answer(response, line(expected))
    response = b.post(f"/control/{queue}", status="stop")
    assert_answer(response, line({"stat": {"queue": queue, "status": 0}}))
    assert store_command(b, "GET", f"queuestat::{stem(b, queue)}") == "0"
    assert b.get(f"/control/{queue}").json()["status"] == {"queue": queue, "status": 0}
    # a stopped queue still takes and gives messages over plain REST
    post_value(b, queue, "y")
    assert b.get(f"/q/{queue}").json()["value"] == "x"
    assert b.post(f"/control/{queue}", status="start").body == line(
        {"stat": {"queue": queue, "status": 1}}
    )
    assert store_command(b, "GET", f"queuestat::{stem(b, queue)}") == "1"


@STORAGE_MODES
def test_control_with_jsonp(shared_broker, queue):
    b = shared_broker
    response = b.post(f"/control/{queue}?callback=cb", status="stop")
    assert_answer(response, jsonp("cb", {"stat": {"queue": queue, "status": 0}}), 200, JSONP_TYPE)
    response = b.get(f"/control/{queue}?callback=cb")
    assert response.headers["content-type"] == JSONP_TYPE
    text = response.text
    assert text.startswith("cb(") and text.endswith(");\r\n")
    assert json.loads(text[3:-4])["status"] == {"queue": queue, "status": 0}
    response = b.get("/control/?callback=cb")
    assert response.text.startswith("cb({") and response.text.endswith("});\r\n")


@STORAGE_MODES
def test_control_invalid_status_is_400(shared_broker, queue):
    b = shared_broker
    # The original's shape, byte for byte: {"stat": ...}, not {"error": ...}
    assert_answer(
        b.post(f"/control/{queue}", status="pause"), line({"stat": "invalid status: pause"}), 400
    )
    assert_answer(b.post(f"/control/{queue}"), line({"stat": "invalid status: None"}), 400)
    assert store_command(b, "EXISTS", f"queuestat::{stem(b, queue)}") == 0


@STORAGE_MODES
def test_control_of_a_queue_never_used_reads_started(shared_broker, queue):
    response = shared_broker.get(f"/control/{queue}")
    assert response.json()["status"] == {"queue": queue, "status": 1}


# -- /stats/<queue>, /stats/ and /control/ on a broker of our own -----------------


@STORAGE_MODES
def test_stats_of_one_queue(shared_broker, queue):
    b = shared_broker
    for i in range(3):
        post_value(b, queue, str(i))
    response = b.get(f"/stats/{queue}")
    redis = response.json()["redis"]
    assert redis_field(b).fullmatch(redis), redis
    expected = {"redis": redis, "queue": queue, "len": 3, "consumers": 0, "leased": 0}
    assert_answer(response, line(expected))
    response = b.get(f"/stats/{queue}?callback=stats.show")
    assert_answer(response, jsonp("stats.show", expected), 200, JSONP_TYPE)


def test_stats_and_control_of_all_queues_byte_for_byte(broker_factory):
    # every queue of the store is in the answer: a broker on an empty store of its own
    broker = broker_factory()
    redis_pattern = re.escape(f"<Redis Connection: unix:{broker.data_dir}/valkey.sock - ")
    empty = broker.get("/stats/")
    redis = empty.json()["redis"]
    assert re.fullmatch(redis_pattern + r"([1-9]|10) connection\(s\)>", redis)
    assert_answer(empty, line({"queues": {}, "redis": redis, "count": 0}))

    for value in ("a", "b", "c"):
        broker.post("/q/beta", value=value)
    broker.post("/q/alpha", value="x")
    broker.post("/p/beta", policy="roundrobin")
    broker.post("/control/alpha", status="stop")

    response = broker.get("/stats/")
    redis = response.json()["redis"]
    queues = {
        "alpha": {"name": "alpha", "len": 1, "status": 0, "policy": 1, "consumers": 0, "leased": 0},
        "beta": {"name": "beta", "len": 3, "status": 1, "policy": 2, "consumers": 0, "leased": 0},
    }
    assert_answer(response, line({"queues": queues, "redis": redis, "count": 2}))
    response = broker.get("/stats/?callback=cb")
    redis = json.loads(response.text[3:-4])["redis"]
    expected = jsonp("cb", {"queues": queues, "redis": redis, "count": 2})
    assert_answer(response, expected, 200, JSONP_TYPE)

    response = broker.get("/control/")
    redis = response.json()["redis"]
    statuses = {
        "alpha": {"queue": "alpha", "status": 0},
        "beta": {"queue": "beta", "status": 1},
    }
    assert_answer(response, line({"redis": redis, "queues": statuses, "count": 2}))


@STORAGE_MODES
def test_stats_and_control_of_all_queues_show_each_queue(shared_broker, queue):
    # the store is shared with other tests: only these queues' entries are known
    b = shared_broker
    alpha, beta = f"{queue}alpha", f"{queue}beta"
    for value in ("a", "b", "c"):
        post_value(b, beta, value)
    post_value(b, alpha, "x")
    b.post(f"/p/{beta}", policy="roundrobin")
    b.post(f"/control/{alpha}", status="stop")

    stats = b.get("/stats/").json()
    assert redis_field(b).fullmatch(stats["redis"]), stats["redis"]
    assert stats["count"] == len(stats["queues"])
    assert stats["queues"][alpha] == {
        "name": alpha, "len": 1, "status": 0, "policy": 1, "consumers": 0, "leased": 0
    }  # fmt: skip
    assert stats["queues"][beta] == {
        "name": beta, "len": 3, "status": 1, "policy": 2, "consumers": 0, "leased": 0
    }  # fmt: skip
    control = b.get("/control/").json()
    assert redis_field(b).fullmatch(control["redis"]), control["redis"]
    assert control["count"] == len(control["queues"])
    assert control["queues"][alpha] == {"queue": alpha, "status": 0}
    assert control["queues"][beta] == {"queue": beta, "status": 1}


# -- /j/<queue> ---------------------------------------------------------------


@STORAGE_MODES
def test_jobs_page_shows_name_counts_and_the_ten_newest_keys(shared_broker, queue):
    b = shared_broker
    for i in range(12):
        post_value(b, queue, f"job {i}")
    b.get(f"/q/{queue}")  # pops queue:1
    b.post(f"/p/{queue}", policy="roundrobin")
    response = b.get(f"/j/{queue}")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=UTF-8"
    page = response.text
    assert f'<dd id="name">{queue}</dd>' in page
    assert '<dd id="objects">12</dd>' in page
    assert '<dd id="pending">11</dd>' in page
    assert '<dd id="status">started</dd>' in page
    assert '<dd id="policy">roundrobin</dd>' in page
    newest = re.findall(r"<li>([^<]+)</li>", page.split('id="latest"')[1])
    assert newest == [b.key(queue, n) for n in range(12, 2, -1)]
    assert "job 5" not in page  # keys, not values


@STORAGE_MODES
def test_jobs_page_of_an_unknown_queue(shared_broker, queue):
    page = shared_broker.get(f"/j/{queue}").text
    assert '<dd id="objects">0</dd>' in page
    assert '<dd id="pending">0</dd>' in page
    assert re.search(r'<ul id="latest">\s*</ul>', page)


# -- static pages -------------------------------------------------------------------


def test_static_dashboard_is_served_with_its_script_and_styles(shared_broker):
    b = shared_broker
    response = b.get("/static/index.html")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in ("queues", "queue-rows", "queue-count", "storage", "updated", "post-form"):
        assert f'id="{element}"' in page, element
    assert '<script src="/static/restmq.js"' in page
    assert '<link rel="stylesheet" href="/static/restmq.css">' in page
    script = b.get("/static/restmq.js")
    assert script.status == 200
    assert 'new EventSource(brokerUrl("/stats/"))' in script.text  # pushed, not polled
    for route in ("/q/", "/c/", "/p/", "/control/", "/stats/", "/j/"):
        assert f'"{route}"' in script.text, route
    assert "setInterval" not in script.text
    assert b.get("/static/restmq.css").headers["content-type"] == "text/css"


@STORAGE_MODES
def test_static_help_page_has_a_form_for_the_json_protocol(shared_broker, queue):
    b = shared_broker
    response = b.get("/static/help.html")
    assert response.status == 200
    page = response.text
    assert '<form id="json-form" method="post" action="/queue">' in page
    assert '<textarea id="json-command" name="body"' in page
    for element in ("json-send", "json-answer", "json-status", "example-take"):
        assert f'id="{element}"' in page, element
    # what the form sends without JavaScript: the field "body" to /queue
    response = b.post("/queue", body=json.dumps({"cmd": "add", "queue": queue, "value": "form"}))
    assert response.json()["key"] == b.key(queue, 1)


def test_missing_static_file_is_a_json_404(shared_broker):
    assert_error(shared_broker.get("/static/nope.html"), 404, "no such file: /static/nope.html")


# -- routes and methods that do not exist --------------------------------------------


@pytest.mark.parametrize(
    "path", ["/nope", "/q", "/stats", "/control", "/static", "/c", "/index.html"]
)
def test_unknown_routes_are_json_404(shared_broker, path):
    assert_error(shared_broker.get(path), 404, "no such route")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/q/x"),
        ("PATCH", "/q/x"),
        ("DELETE", "/"),
        ("DELETE", "/stats/x"),
        ("POST", "/stats/x"),
        ("POST", "/j/x"),
        ("DELETE", "/p/x"),
        ("DELETE", "/control/x"),
        ("PUT", "/queue"),
        ("HEAD", "/q/x"),
        ("OPTIONS", "/q/x"),
    ],
)
def test_wrong_methods_are_json_405(shared_broker, method, path):
    response = shared_broker.request(method, path, body=b"" if method != "HEAD" else None)
    assert response.status == 405
    if method != "HEAD":
        assert response.json() == {"error": f"method {method} is not allowed on {path}"}
        assert response.body.endswith(b"\r\n")
