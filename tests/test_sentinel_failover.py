"""A broker behind Sentinel follows a failover: real master, replicas, sentinels and broker.

The master is killed (SIGKILL) under a producer's load; the sentinels promote a
replica. Meanwhile every request answers at once or within the Redis timeout
(never hangs), writes resume on the promoted replica, every add answered 200
under ``--redis-wait-replicas 1`` is on the new master, and SSE and WebSocket
streams opened before the failover deliver again after it, and a long poll answers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from tests.support import HttpStream, SentinelGroup, WebSocketStream, request, wait_for

REDIS_TIMEOUT = 1.0
# 503 at once while there is no master; an add whose WAIT or connection failed
# answers within the script's time plus WAIT's (two Redis timeouts).
LONGEST_ANSWER = 2 * REDIS_TIMEOUT + 1.0


@pytest.fixture
def group(tmp_path_factory):
    # Two replicas: after the failover one is the new master and the other
    # replicates it, so writes confirmed by one replica can resume.
    started = SentinelGroup(tmp_path_factory.mktemp("sentinel"), replicas=2)
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture
def broker(group, broker_factory):
    return broker_factory(
        "--redis-sentinel", group.sentinel_option, "--redis-service", group.service,
        "--redis-wait-replicas", "1", "--redis-timeout", str(REDIS_TIMEOUT),
    )  # fmt: skip


@dataclass
class Answer:
    sent: float
    took: float
    status: int
    body: str
    value: str


class Producer(threading.Thread):
    """POSTs numbered messages to one queue until stopped; records every answer."""

    def __init__(self, port: int, queue: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.queue = queue
        self.answers: list[Answer] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            value = f"m{n}"
            n += 1
            started = time.monotonic()
            try:
                response = request(
                    self.port, "POST", f"/q/{self.queue}", form={"value": value}, timeout=15
                )
                status, body = response.status, response.text
            except OSError as exc:  # a hang would show up as a timeout here
                status, body = 0, repr(exc)
            took = time.monotonic() - started
            self.answers.append(Answer(started, took, status, body, value))
            if status != 200:
                time.sleep(0.02)

    def stored_after(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.status == 200 and a.sent > moment]


def open_streams(broker, queue: str) -> dict:
    """An SSE and a WebSocket consumer, each on its own queue, both delivering."""
    streams = {
        f"{queue}-sse": HttpStream(broker.port, f"{queue}-sse", sse=True).start(),
        f"{queue}-ws": WebSocketStream(broker.port, f"{queue}-ws").start(),
    }
    for name in streams:
        wait_for(lambda name=name: broker.get(f"/stats/{name}").json()["consumers"] == 1, 10,
                 what=f"the consumer of {name}")  # fmt: skip
    assert_streams_deliver(broker, streams, "before")
    return streams


def assert_subscribed_on(server, streams: dict) -> None:
    """The broker listens for notices on ``server``, the master: PUBLISH counts it."""
    for name in streams:
        channel = f"restmq:notify:0:{name}"
        wait_for(lambda channel=channel: server.command("PUBSUB", "NUMSUB", channel)[1] == 1,
                 10, what=f"a subscriber of {channel} on the master")  # fmt: skip


def assert_streams_deliver(broker, streams: dict, value: str) -> None:
    for name, stream in streams.items():
        assert broker.post(f"/q/{name}", value=value).status == 200
        assert stream.next_message(10)["value"] == value, name


def test_writes_follow_a_killed_master_to_the_promoted_replica(group, broker, queue):
    streams = open_streams(broker, queue)

    producer = Producer(broker.port, queue)
    producer.start()
    wait_for(lambda: len(producer.stored_after(0)) >= 20, 10, what="the producer's first adds")

    old_master = group.node(group.master_port())
    old_master.kill()
    killed_at = time.monotonic()
    try:
        wait_for(lambda: len(producer.stored_after(killed_at + 0.5)) >= 20, 30,
                 what="writes to resume after the failover")  # fmt: skip
    finally:
        producer.halt.set()
        producer.join(20)
    resumed = producer.stored_after(killed_at + 0.5)[0].sent - killed_at
    print(f"writes resumed {resumed:.1f} s after the master was killed")

    new_master = group.node(group.master_port())
    assert new_master is not old_master
    assert "role:master" in new_master.command("INFO", "replication")

    # Every request had its answer in time: none hung, none failed otherwise.
    slowest = max(a.took for a in producer.answers)
    assert slowest < LONGEST_ANSWER, f"an add took {slowest:.1f} s"
    assert {a.status for a in producer.answers} <= {200, 503, 504}
    for answer in producer.answers:
        if answer.status != 200:
            assert answer.body.startswith('{"error": '), answer.body
    refused = [a for a in producer.answers if a.status == 503 and "no connection" in a.body]
    assert refused and max(a.took for a in refused) < 0.5, "no master: 503 at once"

    # Every add answered 200 is on the new master, with its body.
    stored = [a for a in producer.answers if a.status == 200]
    listed = set(new_master.command("LRANGE", f"{queue}:queue", "0", "-1"))
    missing = [a.body.strip() for a in stored if a.body.strip() not in listed]
    assert not missing, f"{len(missing)} of {len(stored)} acknowledged adds are lost: {missing[:5]}"
    for answer in stored[:: max(1, len(stored) // 50)]:
        assert new_master.command("GET", answer.body.strip()) == answer.value

    # The streams opened before the failover deliver again (pub/sub followed too).
    assert_subscribed_on(new_master, streams)
    assert_streams_deliver(broker, streams, "after")
    for stream in streams.values():
        stream.close()
    assert_a_long_poll_answers(broker, f"{queue}-poll")

    stats = broker.get("/stats/").json()
    assert f"127.0.0.1:{new_master.port}" in stats["redis"]


def assert_a_long_poll_answers(broker, queue: str) -> None:
    """A waiting ``GET /q/<q>?wait=`` answers the moment a message is added."""
    answers = []
    poll = threading.Thread(
        target=lambda: answers.append(broker.get(f"/q/{queue}?wait=10", timeout=15))
    )
    poll.start()
    time.sleep(0.3)  # the request is parked: the queue is empty
    posted = time.monotonic()
    assert broker.post(f"/q/{queue}", value="woken").status == 200
    poll.join(15)
    assert answers and answers[0].status == 200, answers
    assert answers[0].json()["value"] == "woken"
    assert time.monotonic() - posted < 2, "the long poll answered when the message came"


def test_a_coordinated_switchover_loses_no_acknowledged_add(group, broker, queue):
    """A planned switchover (``SENTINEL FAILOVER <service> COORDINATED``): the old master
    holds writes until the replica caught up, then answers READONLY; the broker moves."""
    old_port = group.master_port()
    streams = open_streams(broker, queue)
    producer = Producer(broker.port, queue)
    producer.start()
    wait_for(lambda: len(producer.stored_after(0)) >= 20, 10, what="the producer's first adds")
    switched_at = time.monotonic()
    answer = group.watchers[0].command("SENTINEL", "FAILOVER", group.service, "COORDINATED")
    assert answer == "OK"
    try:
        wait_for(lambda: group.master_port() != old_port, 20, what="the switchover")
        moved = time.monotonic()
        wait_for(lambda: len(producer.stored_after(moved)) >= 20, 20,
                 what="writes after the switchover")  # fmt: skip
    finally:
        producer.halt.set()
        producer.join(20)
    print(f"switchover took {moved - switched_at:.1f} s")

    new_master = group.node(group.master_port())
    assert {a.status for a in producer.answers} <= {200, 503, 504}
    assert max(a.took for a in producer.answers) < LONGEST_ANSWER
    stored = [a for a in producer.answers if a.status == 200]
    listed = set(new_master.command("LRANGE", f"{queue}:queue", "0", "-1"))
    missing = [a.body.strip() for a in stored if a.body.strip() not in listed]
    assert not missing, f"{len(missing)} of {len(stored)} acknowledged adds are lost: {missing[:5]}"
    old = group.node(old_port)
    assert "role:slave" in old.command("INFO", "replication")
    assert f"127.0.0.1:{new_master.port}" in broker.get("/stats/").json()["redis"]
    assert_subscribed_on(new_master, streams)
    assert all(old.command("PUBSUB", "NUMSUB", f"restmq:notify:0:{n}")[1] == 0 for n in streams)
    assert_streams_deliver(broker, streams, "after")
    for stream in streams.values():
        stream.close()
