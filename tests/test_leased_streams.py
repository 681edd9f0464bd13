"""Leased streams: COMET, SSE and WebSocket consumers with a prefetch window, acked
over HTTP (on any broker) or with WebSocket frames, against real brokers."""

from __future__ import annotations

import json
import queue as queue_module
import threading
import time

import pytest

from tests.support import (
    STORAGE_MODES,
    HttpStream,
    WebSocketStream,
    stem_of,
    storage_args,
    store_command,
    wait_consumers,
    wait_for,
)


def add(broker, queue: str, *values: str) -> list[str]:
    keys = []
    for value in values:
        response = broker.post(f"/q/{queue}", value=value)
        assert response.status == 200, response.body
        keys.append(response.text.strip())
    return keys


def leased_count(broker, queue: str) -> int:
    return int(store_command(broker, "ZCARD", f"{stem_of(broker, queue)}:leased"))


def queued_keys(broker, queue: str) -> list[str]:
    """The keys waiting in the queue, next to be taken first."""
    return list(reversed(store_command(broker, "LRANGE", f"{stem_of(broker, queue)}:queue", 0, -1)))


def nothing_more(stream, wait: float = 0.5) -> bool:
    return stream.drain(wait) == []


def ack_over_http(broker, queue: str, receipt: str):
    return broker.request("DELETE", f"/q/{queue}?receipt={receipt}")


# -- WebSocket, acked with frames ---------------------------------------------------------


@STORAGE_MODES
def test_a_leased_websocket_holds_its_window_and_acks_open_it(shared_broker, queue):
    keys = add(shared_broker, queue, *(f"m{i}" for i in range(5)))
    ws = WebSocketStream(shared_broker.port, f"{queue}?lease=60&prefetch=2").start()
    try:
        first, second = ws.next_message(), ws.next_message()
        assert [first["key"], second["key"]] == keys[:2]
        assert first == {"key": keys[0], "value": "m0", "receipt": f"{keys[0]}@1",
                         "deliveries": 1}  # fmt: skip
        assert nothing_more(ws)  # two unacknowledged: the window is full
        assert leased_count(shared_broker, queue) == 2
        ws.ws.send(json.dumps({"ack": first["receipt"]}))
        assert ws.next_message()["key"] == keys[2]
        assert nothing_more(ws)
        # the acked message is gone for good; the others wait or are leased
        assert store_command(shared_broker, "EXISTS", keys[0]) == 0
        assert leased_count(shared_broker, queue) == 2
        assert queued_keys(shared_broker, queue) == keys[3:]
    finally:
        ws.close()


@STORAGE_MODES
def test_a_nack_releases_the_message_to_the_head_of_the_queue(shared_broker, queue):
    keys = add(shared_broker, queue, "a", "b", "c")
    ws = WebSocketStream(shared_broker.port, f"{queue}?lease=60&prefetch=1").start()
    try:
        first = ws.next_message()
        assert first["key"] == keys[0]
        ws.ws.send(json.dumps({"nack": first["receipt"]}))
        again = ws.next_message()  # back at the head: it comes again, before b
        assert again["key"] == keys[0]
        assert again["deliveries"] == 2
        assert again["receipt"] == f"{keys[0]}@2"
        ws.ws.send(json.dumps({"ack": again["receipt"]}))
        assert ws.next_message()["key"] == keys[1]
    finally:
        ws.close()


@STORAGE_MODES
def test_bad_ack_frames_are_answered_with_an_error_frame_and_the_stream_goes_on(
    shared_broker, queue
):
    keys = add(shared_broker, queue, "a", "b")
    ws = WebSocketStream(shared_broker.port, f"{queue}?lease=60&prefetch=1").start()
    try:
        first = ws.next_message()
        ws.ws.send("not json")
        assert "error" in ws.next_message()
        ws.ws.send(json.dumps({"ack": "other:1@1"}))
        assert "is not a receipt of queue" in ws.next_message()["error"]
        ws.ws.send(json.dumps({"ack": first["receipt"]}))
        assert ws.next_message()["key"] == keys[1]
        ws.ws.send(json.dumps({"ack": first["receipt"]}))  # twice: the lease is gone
        told = ws.next_message()
        assert told["receipt"] == first["receipt"] and "gone" in told["error"]
    finally:
        ws.close()


@STORAGE_MODES
def test_an_unleased_websocket_still_echoes_its_frames(shared_broker, queue):
    ws = WebSocketStream(shared_broker.port, queue).start()
    try:
        ws.ws.send(json.dumps({"ack": "x"}))
        assert ws.next() == json.dumps({"ack": "x"})
    finally:
        ws.close()


@STORAGE_MODES
def test_a_consumer_that_leaves_gives_its_unacked_messages_back_at_once(shared_broker, queue):
    keys = add(shared_broker, queue, *(f"m{i}" for i in range(5)))
    ws = WebSocketStream(shared_broker.port, f"{queue}?lease=600&prefetch=3").start()
    got = [ws.next_message() for _ in range(3)]
    ws.ws.send(json.dumps({"ack": got[0]["receipt"]}))
    ws.next_message()  # the window moved on: keys[3]
    assert leased_count(shared_broker, queue) == 3
    ws.close()
    # not after the 600 s lease: now, back at the head in the order they were taken
    wait_for(lambda: leased_count(shared_broker, queue) == 0, 5, what="leases released")
    assert queued_keys(shared_broker, queue) == keys[1:]


@STORAGE_MODES
def test_a_lease_that_runs_out_frees_the_slot_and_the_message_comes_again(shared_broker, queue):
    keys = add(shared_broker, queue, "slow")
    ws = WebSocketStream(shared_broker.port, f"{queue}?lease=1&prefetch=1").start()
    try:
        first = ws.next_message()
        again = ws.next_message(timeout=10)  # never acked: the lease ran out
        assert again["key"] == keys[0]
        assert again["deliveries"] == 2
        ws.ws.send(json.dumps({"ack": first["receipt"]}))  # late: refused
        assert "gone" in ws.next_message()["error"]
        ws.ws.send(json.dumps({"ack": again["receipt"]}))
        wait_for(lambda: store_command(shared_broker, "EXISTS", keys[0]) == 0, 5, what="the ack")
    finally:
        ws.close()


# -- SSE and COMET, acked over HTTP -------------------------------------------------------


@STORAGE_MODES
def test_a_leased_sse_stream_is_acked_over_http(shared_broker, queue):
    keys = add(shared_broker, queue, "a", "b", "c")
    sse = HttpStream(shared_broker.port, queue, sse=True, query="?lease=60&prefetch=2").start()
    try:
        events = [sse.next(), sse.next()]
        messages = [json.loads(event["data"]) for event in events]
        assert [event["id"] for event in events] == keys[:2]
        assert [m["receipt"] for m in messages] == [f"{keys[0]}@1", f"{keys[1]}@1"]
        assert nothing_more(sse)
        answer = ack_over_http(shared_broker, queue, messages[1]["receipt"])
        assert answer.status == 200
        assert answer.json() == {"queue": queue, "key": keys[1], "acked": True}
        assert sse.next_message()["key"] == keys[2]
        again = ack_over_http(shared_broker, queue, messages[1]["receipt"])
        assert again.status == 409
        assert "gone" in again.json()["error"]
    finally:
        sse.close()


@STORAGE_MODES
def test_a_leased_comet_stream_is_acked_over_http(shared_broker, queue):
    keys = add(shared_broker, queue, "a", "b")
    comet = HttpStream(shared_broker.port, queue, query="?lease=60").start()  # prefetch 10
    try:
        got = [comet.next_message(), comet.next_message()]
        assert [m["key"] for m in got] == keys
        for message in got:
            assert ack_over_http(shared_broker, queue, message["receipt"]).status == 200
        wait_for(lambda: leased_count(shared_broker, queue) == 0, 5, what="acks")
        assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0
    finally:
        comet.close()


@STORAGE_MODES
@pytest.mark.parametrize(
    "query, complaint",
    [
        ("?lease=0", "lease must be a whole number from 1 to 43200"),
        ("?lease=43201", "lease must be a whole number from 1 to 43200"),
        ("?lease=ten", "lease must be a whole number"),
        ("?lease=5&prefetch=0", "prefetch must be a whole number from 1 to 1000"),
        ("?lease=5&prefetch=1001", "prefetch must be a whole number from 1 to 1000"),
        ("?prefetch=5", "prefetch needs lease"),
    ],
)
def test_bad_lease_and_prefetch_are_refused_before_the_stream_opens(
    shared_broker, queue, query, complaint
):
    answer = shared_broker.get(f"/c/{queue}{query}")
    assert answer.status == 400
    assert complaint in answer.json()["error"]
    with pytest.raises(Exception, match="400"):
        WebSocketStream(shared_broker.port, f"{queue}{query}")


@STORAGE_MODES
def test_stats_count_leased_stream_consumers(shared_broker, queue):
    ws = WebSocketStream(shared_broker.port, f"{queue}?lease=30").start()
    sse = HttpStream(shared_broker.port, queue, sse=True, query="?lease=30&prefetch=5").start()
    try:
        wait_consumers(shared_broker, queue, 2)
        add(shared_broker, queue, "x")
        wait_for(lambda: leased_count(shared_broker, queue) == 1, 5, what="a lease")
        line = shared_broker.get("/stats/").json()["queues"][queue]
        assert line["consumers"] == 2
    finally:
        ws.close()
        sse.close()


# -- policies -----------------------------------------------------------------------------


@STORAGE_MODES
def test_under_broadcast_leased_consumers_compete_and_unleased_ones_get_everything(
    shared_broker, queue
):
    plain = WebSocketStream(shared_broker.port, queue).start()
    leased = [
        WebSocketStream(shared_broker.port, f"{queue}?lease=60&prefetch=2").start()
        for _ in range(2)
    ]
    try:
        wait_consumers(shared_broker, queue, 3)
        keys = add(shared_broker, queue, *(f"m{i}" for i in range(8)))
        taken: list[str] = []

        def ack_all():
            for stream in leased:
                for raw in stream.drain(0.1):
                    message = json.loads(raw)
                    taken.append(message["key"])
                    stream.ws.send(json.dumps({"ack": message["receipt"]}))
            return len(taken) >= len(keys)

        wait_for(ack_all, 10, what="the leased consumers to take every message")
        assert sorted(taken) == sorted(keys)  # each message to one leased consumer
        # The unleased consumer got every message, in order, as the leased ones took them.
        assert [plain.next_message()["key"] for _ in keys] == keys
        assert nothing_more(plain)
        wait_for(lambda: leased_count(shared_broker, queue) == 0, 5, what="acks")
    finally:
        for stream in (plain, *leased):
            stream.close()


@STORAGE_MODES
def test_under_roundrobin_the_window_is_the_leased_consumers_share(shared_broker, queue):
    shared_broker.post(f"/p/{queue}", policy="roundrobin")
    plain = WebSocketStream(shared_broker.port, queue).start()
    leased = WebSocketStream(shared_broker.port, f"{queue}?lease=60&prefetch=3").start()
    try:
        wait_consumers(shared_broker, queue, 2)
        keys = add(shared_broker, queue, *(f"m{i}" for i in range(10)))
        held = [json.loads(raw) for raw in leased.drain(1.0)]
        assert len(held) == 3  # its window, never more
        got_plain = [json.loads(raw)["key"] for raw in plain.drain(0.5)]
        assert sorted(got_plain + [m["key"] for m in held]) == sorted(keys)
    finally:
        plain.close()
        leased.close()


# -- brokers on a store of their own: a standalone Valkey, or the session Valkey Cluster --


@pytest.fixture(params=["standalone", "cluster"])
def store_args(request, valkey_factory) -> tuple[str, ...]:
    """The options that put a broker on this test's store (several may share it)."""
    if request.param == "cluster":
        return tuple(storage_args("cluster", request))
    return ("--redis-port", str(valkey_factory().port))


def test_an_ack_to_a_second_broker_opens_the_window_on_the_first(broker_factory, store_args, queue):
    first = broker_factory(*store_args)
    second = broker_factory(*store_args)
    keys = add(second, queue, "a", "b", "c")
    ws = WebSocketStream(first.port, f"{queue}?lease=60&prefetch=1").start()
    sse = HttpStream(first.port, queue, sse=True, query="?lease=60&prefetch=1").start()
    try:
        held = {ws.next_message()["key"]: "ws", sse.next_message()["key"]: "sse"}
        assert sorted(held) == keys[:2]
        assert nothing_more(ws) and nothing_more(sse)
        receipt = f"{keys[0]}@1"
        answer = ack_over_http(second, queue, receipt)  # not the broker holding it
        assert answer.status == 200
        opened = ws if held[keys[0]] == "ws" else sse
        assert opened.next_message()["key"] == keys[2]
    finally:
        ws.close()
        sse.close()


# -- stopping -----------------------------------------------------------------------------


def test_sigterm_under_leased_load_loses_nothing(broker_factory, store_args, queue):
    """Every add answered 200 is acked by a consumer or back in the queue after restart;
    the streams end (WebSocket 1001, SSE ``event: end``) and no lease is left to run out."""
    broker = broker_factory(*store_args)
    # read by ack_frames below, not by a reader thread of their own
    consumers = [WebSocketStream(broker.port, f"{queue}?lease=600&prefetch=5") for _ in range(3)]
    sse = HttpStream(broker.port, queue, sse=True, query="?lease=600&prefetch=5").start()
    wait_consumers(broker, queue, 4)
    added: list[str] = []
    acked: set[str] = set()
    stopping = threading.Event()

    def produce() -> None:
        i = 0
        while not stopping.is_set():
            try:
                response = broker.post(f"/q/{queue}", value=f"v{i}")
            except OSError:
                return
            if response.status == 200:
                added.append(response.text.strip())
            i += 1

    def ack_frames(stream) -> None:
        # Every third message stays unacknowledged: the stop must give those back.
        for raw in stream.ws:
            message = json.loads(raw)
            if "receipt" in message and int(message["key"].split(":")[1]) % 3:
                try:
                    stream.ws.send(json.dumps({"ack": message["receipt"]}))
                except Exception:
                    return
                acked.add(message["key"])  # sent; if the stop beat it, it waits again

    def ack_http() -> None:
        while True:
            try:
                event = sse.next(timeout=0.2)
            except queue_module.Empty:
                if sse.ended.is_set():
                    return
                continue
            if event.get("event") == "end":
                return
            message = json.loads(event["data"])
            try:
                if ack_over_http(broker, queue, message["receipt"]).status == 200:
                    acked.add(message["key"])
            except OSError:
                return

    workers = [threading.Thread(target=produce)]
    workers += [threading.Thread(target=ack_frames, args=(s,)) for s in consumers]
    workers.append(threading.Thread(target=ack_http))
    for worker in workers:
        worker.start()
    time.sleep(2)
    broker.stop()
    stopping.set()
    for worker in workers:
        worker.join(15)
    assert "RestMQ stopped" in broker.log()
    assert len(added) > 50 and len(acked) > 20, "there was load"
    assert all(stream.ws.close_code == 1001 for stream in consumers)  # going away
    assert b"event: end\n" in sse.raw_lines
    for stream in consumers:
        stream.close()
    sse.close()
    assert leased_count(broker, queue) == 0  # none left to run out
    waiting = set(queued_keys(broker, queue))
    assert set(added) - waiting - acked == set(), "acknowledged adds lost"
    assert all(store_command(broker, "EXISTS", key) == 1 for key in waiting)
    assert all(store_command(broker, "EXISTS", key) == 0 for key in acked - waiting)
    again = broker_factory(*store_args)
    assert again.get(f"/stats/{queue}").json()["len"] == len(waiting)


def test_under_broadcast_a_leased_consumer_on_another_broker_gets_every_message(
    broker_factory, store_args, queue
):
    """Broker B has only an unleased consumer: it takes nothing itself while broker A has
    a leased one, so each message reaches the leased consumer, and B's still gets all."""
    a = broker_factory(*store_args)
    b = broker_factory(*store_args)
    leased_streams = f"{stem_of(a, queue)}:leasedstreams"
    plain = WebSocketStream(b.port, queue).start()
    leased = WebSocketStream(a.port, f"{queue}?lease=60&prefetch=2").start()
    try:
        wait_consumers(a, queue, 1)
        wait_consumers(b, queue, 1)
        wait_for(lambda: store_command(a, "EXISTS", leased_streams) == 1, 5,
                 what="broker A's leased stream seen in Redis")  # fmt: skip
        keys = add(b, queue, *(f"m{i}" for i in range(6)))
        taken: list[str] = []

        def ack_all() -> bool:
            for raw in leased.drain(0.1):
                message = json.loads(raw)
                taken.append(message["key"])
                leased.ws.send(json.dumps({"ack": message["receipt"]}))
            return len(taken) >= len(keys)

        wait_for(ack_all, 10, what="the leased consumer to take every message")
        assert taken == keys
        assert [plain.next_message()["key"] for _ in keys] == keys
        leased.close()
        # A withdraws: B's consumer takes by itself again, at once
        wait_for(lambda: store_command(a, "EXISTS", leased_streams) == 0, 5,
                 what="the leased stream withdrawn")  # fmt: skip
        later = add(b, queue, "after")
        assert plain.next_message(timeout=3)["key"] == later[0]
    finally:
        plain.close()
        leased.close()
