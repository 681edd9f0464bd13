"""Stopping the broker (SIGTERM) loses no acknowledged message and answers honestly.

Counted, not guessed: every message a producer got a 200 for is afterwards either
received by a stream consumer or still in its queue (read after a restart on the
same data directory); a message answered 503 was not stored.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import socket
import threading
import time
import urllib.parse

import pytest

from tests.support import RawSseStream, take_all, wait_for


class Producer(threading.Thread):
    """POSTs numbered messages on one kept-alive connection until the broker is gone."""

    def __init__(self, port: int, name: str, queues: list[str]) -> None:
        super().__init__(daemon=True)
        self.port, self.tag, self.queues = port, name, queues
        self.acked: set[str] = set()  # 200
        self.refused: set[str] = set()  # 503: nothing was stored
        self.unknown: set[str] = set()  # 504, or no answer at all
        self.statuses: list[int] = []

    def run(self) -> None:
        conn = None
        failures = 0
        for i in range(100_000):
            value = f"{self.tag}-{i}"
            queue = self.queues[i % len(self.queues)]
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request(
                    "POST",
                    f"/q/{queue}",
                    body=urllib.parse.urlencode({"value": value}),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                answer = conn.getresponse()
                answer.read()
            except OSError:  # refused, reset, or closed before an answer came
                self.unknown.add(value)
                conn = None
                failures += 1
                if failures >= 3:
                    return  # the broker is gone
                time.sleep(0.05)
                continue
            failures = 0
            self.statuses.append(answer.status)
            if answer.status == 200:
                self.acked.add(value)
            elif answer.status == 503:
                self.refused.add(value)
            else:
                self.unknown.add(value)
            if answer.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
            time.sleep(0.002)


# A script that keeps Redis busy for a few tenths of a second (scripts see a frozen
# clock, so it counts instead of watching the time).
BUSY_SCRIPT = "local x = 0 for i = 1, 40000000 do x = x + i end return 1"


def keep_busy(broker) -> None:
    with contextlib.suppress(OSError, ValueError):  # the stopping server may hang up
        broker.redis("EVAL", BUSY_SCRIPT, "0")


def consumers_of(broker, queue: str) -> int:
    return broker.get(f"/stats/{queue}").json().get("consumers", 0)


def test_sigterm_under_load_loses_no_acknowledged_message(broker_factory, queue):
    broker = broker_factory()
    fanout, shared = f"{queue}-b", f"{queue}-r"
    assert broker.post(f"/p/{shared}", policy="roundrobin").status == 200
    streams = [RawSseStream(broker.port, q) for q in [fanout] * 5 + [shared] * 5]
    wait_for(lambda: consumers_of(broker, fanout) == 5 and consumers_of(broker, shared) == 5)
    readers = [stream.read_in_background() for stream in streams]
    producers = [Producer(broker.port, f"p{n}", [fanout, shared]) for n in range(4)]
    for producer in producers:
        producer.start()
    time.sleep(1.5)
    # Redis is busy for a moment as the stop begins: adds, and batches being taken
    # for the streams, are under way; Redis runs them when it is done.
    busy = threading.Thread(target=keep_busy, args=(broker,))
    busy.start()
    time.sleep(0.1)
    stopping = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    broker.proc.wait(20)
    assert time.monotonic() - stopping < 8, "a stop takes a few seconds at most"
    for thread in [busy, *readers, *producers]:
        thread.join(15)
    received = [m["value"] for stream in streams for m in stream.messages()]
    broker.start()
    left = [m["value"] for q in (fanout, shared) for m in take_all(broker, q)]

    acked = set().union(*(p.acked for p in producers))
    refused = set().union(*(p.refused for p in producers))
    assert len(acked) > 100, "the producers were running"
    statuses = [status for p in producers for status in p.statuses]
    assert 504 not in statuses, "a stop lets the writes under way finish"
    assert acked - set(received) - set(left) == set(), "acknowledged messages lost"
    assert refused & (set(received) | set(left)) == set(), "a 503 hid a stored message"
    assert set(received) & set(left) == set(), "a message delivered was also put back"
    shared_received = [m["value"] for s in streams[5:] for m in s.messages()]
    assert len(shared_received) == len(set(shared_received)), "roundrobin delivered twice"
    assert "could not put" not in broker.log()


def test_during_a_stop_kept_alive_connections_get_503_or_are_closed(broker_factory, queue):
    broker = broker_factory()
    idle = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    idle.sendall(b"GET /stats/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    # A request whose body has not fully arrived when the stop begins...
    busy = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    busy.sendall(
        f"POST /q/{queue} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 12\r\n\r\n"
        "value=".encode()
    )
    time.sleep(0.2)
    broker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "HTTP port closed" in broker.log(), 10, what="the stop to begin")
    assert idle.recv(65536) == b"", "an idle kept-alive connection is closed"
    busy.sendall(b"latest")  # ...is answered 503: nothing was stored
    answer = b""
    while chunk := busy.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"Connection: close" in head
    assert b"stopping" in body and b"nothing was done" in body
    broker.proc.wait(20)
    broker.start()
    assert take_all(broker, queue) == []


def test_a_write_under_way_when_the_stop_begins_gets_its_real_answer(broker_factory, queue):
    broker = broker_factory()
    broker.post(f"/q/{queue}", value="warm up")  # the add script is loaded
    assert broker.redis("CLIENT", "PAUSE", "700", "WRITE") == "OK"
    answers = []
    poster = threading.Thread(target=lambda: answers.append(broker.post(f"/q/{queue}", value="x")))
    poster.start()
    time.sleep(0.2)  # sent to Redis, held by the pause
    broker.proc.send_signal(signal.SIGTERM)
    poster.join(10)
    assert answers and answers[0].status == 200, answers
    broker.proc.wait(20)
    broker.start()
    assert [m["value"] for m in take_all(broker, queue)] == ["warm up", "x"]


def test_a_consumer_that_never_reads_does_not_hold_up_the_stop(broker_factory, queue):
    broker = broker_factory()
    stalled = RawSseStream(broker.port, queue, receive_buffer=4096)
    wait_for(lambda: consumers_of(broker, queue) == 1)
    for _ in range(10):
        broker.post(f"/q/{queue}", value="x" * 50_000)
    stopping = time.monotonic()
    broker.proc.send_signal(signal.SIGTERM)
    broker.proc.wait(20)
    assert time.monotonic() - stopping < 8
    assert "RestMQ stopped" in broker.log()
    stalled.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_a_stop_is_only_noted(broker_factory, queue, sig):
    broker = broker_factory()
    # A request whose body is still coming holds the stop open (3 s at most); the
    # answer to a first request shows that the broker has taken the connection.
    slow = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    slow.sendall(b"GET /stats/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert slow.recv(65536).startswith(b"HTTP/1.1 200")
    slow.sendall(
        f"POST /q/{queue} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 12\r\n\r\n"
        "value=".encode()
    )
    broker.proc.send_signal(sig)
    broker.proc.send_signal(sig)  # at once: Ctrl-C twice, or make passing one on
    wait_for(lambda: "HTTP port closed" in broker.log(), 10, what="the stop to begin")
    broker.proc.send_signal(sig)  # and once the stop is under way
    received = f"Received {sig.name}"
    wait_for(lambda: broker.log().count(received) >= 2, 10, what="the signal to be noted")
    slow.close()
    # twistd re-raises the signal on its way out, as daemons should
    assert broker.proc.wait(20) in (0, -sig)
    log = broker.log()
    assert "RestMQ stopped" in log
    for noise in ("Traceback", "ReactorNotRunning", "#critical", "#error"):
        assert noise not in log, log
    assert f"{received} again; the broker is stopping already" in log


def test_a_stop_says_what_it_stops_in_its_order(broker_factory):
    broker = broker_factory()
    broker.stop()
    stopped = re.findall(r"#debug\] stopping: (.+)", broker.log())
    # the HTTP side closes first, the streams end, their bytes go out, then storage goes
    order = ["HTTP port", "long-poll waiters", "streaming consumers", "HTTP connections"]
    order += ["Redis calls under way", "Redis", "embedded Valkey"]
    assert [name for name in stopped if name in order] == order, stopped
