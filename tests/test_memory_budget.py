"""The broker's memory budget (--max-buffered): request bodies in flight and the
backlogs of slow streaming consumers share one limit; memory goes back after a burst."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
import weakref

import psutil
import pytest
from twisted.internet import task
from twisted.python import usage

from restmq.budget import MemoryBudget
from restmq.memory import Reclaimer
from restmq.runtime.options import Options
from tests import support as wire
from tests.support import HttpStream, request, wait_for

MiB = 1024 * 1024


def json_body(size: int) -> bytes:
    """A JSON message of exactly ``size`` bytes."""
    body = json.dumps({"value": ""}).encode()
    return json.dumps({"value": "x" * (size - len(body))}).encode()


def post_head(queue: str, length: int, expect: bool = False) -> bytes:
    head = (
        f"POST /q/{queue} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n"
    )
    if expect:
        head += "Expect: 100-continue\r\n"
    return (head + "\r\n").encode()


def queue_length(broker, queue: str) -> int:
    return broker.get(f"/stats/{queue}").json()["len"]


def rss(process: psutil.Process) -> int:
    return process.memory_info().rss


# -- the budget itself -------------------------------------------------------


def test_a_budget_reserves_what_fits_and_refuses_the_rest():
    budget = MemoryBudget(10)
    assert budget.try_reserve(6)
    assert not budget.try_reserve(5)
    assert budget.used == 6  # a refusal reserves nothing
    assert budget.try_reserve(4)
    budget.release(6)
    assert (budget.used, budget.free, budget.limit) == (4, 6, 10)
    with pytest.raises(ValueError):
        MemoryBudget(0)


def test_a_large_bodys_bytes_go_back_to_the_budget_once_a_cycle_holding_it_is_freed():
    """A failed request can leave its body in a reference cycle (a traceback holding the
    handler's frames): its reservation is given back only after a collection."""
    clock = task.Clock()
    reclaimer = Reclaimer(clock)
    budget = MemoryBudget(10 * MiB)
    assert budget.try_reserve(8 * MiB)

    class Frame:  # stands for the frames a failure's traceback keeps alive
        pass

    held = Frame()
    held.body = bytearray(8 * MiB)
    held.itself = held  # the cycle
    alive = weakref.ref(held)
    del held
    freed_before_release = []

    def release():
        freed_before_release.append(alive() is None)
        budget.release(8 * MiB)

    gc.disable()  # only the reclaimer's collection may free the cycle
    try:
        reclaimer.release_after_collection(release)
        assert budget.used == 8 * MiB and alive() is not None, "counted until collected"
        clock.advance(0)  # the collection runs once the releases of this turn are in
        assert freed_before_release == [True] and budget.used == 0
        # the next release within collect_every waits for the next collection
        assert budget.try_reserve(MiB)
        reclaimer.release_after_collection(lambda: budget.release(MiB))
        clock.advance(reclaimer.collect_every / 2)
        assert budget.used == MiB
        clock.advance(reclaimer.collect_every / 2)
        assert budget.used == 0
    finally:
        gc.enable()
        reclaimer.cancel()
    assert not clock.getDelayedCalls()


def test_max_buffered_must_hold_at_least_one_largest_body():
    options = Options()
    options.parseOptions(["--max-buffered", str(32 * MiB)])
    assert options["max-buffered"] == 32 * MiB
    assert Options()["max-buffered"] == 256 * MiB  # the default
    with pytest.raises(usage.UsageError, match=r"--max-body .* cannot be larger than"):
        Options().parseOptions(["--max-body", str(2 * MiB), "--max-buffered", str(MiB)])


# -- request bodies ----------------------------------------------------------


def test_a_body_beyond_the_budget_gets_503_before_it_is_sent(broker_factory, queue):
    broker = broker_factory("--max-buffered", str(16 * MiB), "--max-body", str(8 * MiB))
    body = json_body(7 * MiB)
    admitted = []
    for _ in range(2):  # 14 MiB of 16 are promised to these two
        sock = wire.connect(broker.port)
        sock.sendall(post_head(queue, len(body), expect=True))
        reader = wire.Reader(sock)
        assert reader.read_head()[1] == 100  # go ahead: the body has room
        admitted.append((sock, reader))

    for expect in (False, True):  # the third gets its answer without sending its body
        with wire.connect(broker.port) as sock:
            sock.sendall(post_head(queue, len(body), expect=expect))
            answer = wire.Reader(sock).read_response("POST")
        assert answer.status == 503
        assert answer.headers["retry-after"].isdigit()
        assert json.loads(answer.body)["error"].startswith("broker busy: ")

    for sock, reader in admitted:
        sock.sendall(body)
        assert reader.read_response("POST").status == 200
        sock.close()
    assert queue_length(broker, queue) == 2  # only the admitted ones were stored

    # Answered requests and dropped connections gave their share back.
    dropped = wire.connect(broker.port)
    dropped.sendall(post_head(queue, len(body), expect=True))
    assert wire.Reader(dropped).read_head()[1] == 100
    dropped.close()
    time.sleep(0.2)
    for _ in range(2):
        response = broker.request(
            "POST", f"/q/{queue}", body=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 200, response.text
    assert queue_length(broker, queue) == 4


def test_pipelined_large_posts_wait_their_turn_and_are_all_stored(broker_factory, queue):
    broker = broker_factory("--max-buffered", str(16 * MiB), "--max-body", str(8 * MiB))
    body = json_body(7 * MiB)
    one = post_head(queue, len(body)) + body
    with wire.connect(broker.port, timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(one * 3,))
        sender.start()  # blocks while the broker reads no further than the request it serves
        reader = wire.Reader(sock, timeout=30)
        statuses = [reader.read_response("POST").status for _ in range(3)]
        sender.join()
    assert statuses == [200, 200, 200]
    assert queue_length(broker, queue) == 3


def test_a_burst_of_large_posts_stays_within_the_budget_and_memory_goes_back(broker_factory, queue):
    budget = 16 * MiB
    broker = broker_factory("--max-buffered", str(budget), "--max-body", str(8 * MiB))
    process = psutil.Process(broker.proc.pid)
    body = json_body(8 * MiB - 1024)
    start = rss(process)
    peak = start
    running = True

    def watch():
        nonlocal peak
        while running:
            peak = max(peak, rss(process))
            time.sleep(0.01)

    answers = []

    def post():
        answer = request(
            broker.port,
            "POST",
            f"/q/{queue}",
            body=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        answers.append(answer)

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=post) for _ in range(40)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    running = False
    watcher.join()

    stored = [a for a in answers if a.status == 200]
    busy = [a for a in answers if a.status == 503]
    assert len(stored) + len(busy) == 40
    assert stored, "nothing was admitted"
    assert all(a.json()["error"].startswith("broker busy: ") for a in busy)
    assert queue_length(broker, queue) == len(stored)
    # Each admitted body is held a few times over on its way to Redis (raw, decoded,
    # the Redis command); 6x the budget is the overhead allowed here.
    assert peak - start < 6 * budget, f"peak grew by {(peak - start) / MiB:.0f} MiB"
    wait_for(
        lambda: rss(process) - start < 64 * MiB,
        timeout=10,
        what=f"RSS back near {start / MiB:.0f} MiB (now {rss(process) / MiB:.0f} MiB)",
    )


# -- streaming consumers -----------------------------------------------------


def slow_consumer(port: int, queue: str) -> socket.socket:
    """A COMET consumer that never reads, so the broker has to buffer for it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /c/{queue} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def publish(broker, queue: str, count: int, size: int) -> None:
    value = "m" * size
    for _ in range(count // 5):
        response = broker.request(
            "POST",
            f"/q/{queue}",
            body=json.dumps({"values": [value] * 5}),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200, response.text


def consumers_of(broker, queue: str) -> int:
    return broker.get(f"/stats/{queue}").json()["consumers"]


def requeued(broker, queue: str) -> int:
    """How many messages the broker's log says it put back on ``queue``."""
    return sum(
        int(line.split(" put ", 1)[1].split()[0])
        for line in broker.log().splitlines()
        if " put " in line and f"back on queue {queue}" in line
    )


def settled(broker, queue: str) -> int:
    """The queue's length once it has stopped changing (its consumer is full)."""
    before = queue_length(broker, queue)
    time.sleep(0.5)
    return before if queue_length(broker, queue) == before else -1


def test_consumers_furthest_behind_are_dropped_first_and_their_messages_go_back(
    broker_factory, queue
):
    broker = broker_factory(
        "--max-buffered", str(8 * MiB), "--max-body", str(8 * MiB),
        "--consumer-buffer", str(8 * MiB),
    )  # fmt: skip
    # far: a broadcast queue whose fast consumer gets everything while a slow one
    # falls far behind; near: a lone slow consumer, a little behind.
    far, near = f"{queue}-far", f"{queue}-near"
    fast = HttpStream(broker.port, far, sse=True).start()
    far_sock, near_sock = slow_consumer(broker.port, far), slow_consumer(broker.port, near)
    wait_for(lambda: consumers_of(broker, far) == 2 and consumers_of(broker, near) == 1)
    publish(broker, far, 75, 100_000)  # 7.5 MB, most of it held for the slow one
    assert len([fast.next_message(timeout=20) for _ in range(75)]) == 75
    publish(broker, near, 40, 100_000)  # it takes what it can, up to a batch beyond
    wait_for(lambda: 0 <= settled(broker, near) < 40, what="the near consumer to stop taking")
    assert consumers_of(broker, far) == 2  # nothing dropped yet

    # A producer needs room: the consumer furthest behind gives way, not the producer.
    response = broker.request(
        "POST", f"/q/{queue}", body=json_body(4 * MiB), headers={"Content-Type": "application/json"}
    )
    assert response.status == 200, response.text
    assert consumers_of(broker, far) == 1  # the slow one is gone, the fast one stays
    assert consumers_of(broker, near) == 1
    assert "memory budget (--max-buffered) is full; disconnecting it" in broker.log()
    assert requeued(broker, far) == 0  # the fast consumer got each of those messages

    # A producer that needs (nearly) all of it: the near consumer goes too, and what
    # only it held goes back to its queue, intact.
    waiting = queue_length(broker, near)
    response = broker.request(
        "POST", f"/q/{queue}", body=json_body(8 * MiB - 1024),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status == 200, response.text
    assert consumers_of(broker, near) == 0
    wait_for(lambda: requeued(broker, near) > 0, what="the near consumer's messages put back")
    assert queue_length(broker, near) == waiting + requeued(broker, near)
    assert broker.get(f"/q/{near}").json()["value"] == "m" * 100_000
    fast.close()
    far_sock.close()
    near_sock.close()
