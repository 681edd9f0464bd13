"""At-least-once delivery when things die: consumers, brokers, the embedded Valkey.

Consumers here are processes running examples/reliable_consumer.py (long poll with a
lease, process, ack), killed with SIGKILL as a crash would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support import ROOT, Broker, post_value, request, valkey_pids, wait_for

EXAMPLE = ROOT / "examples" / "reliable_consumer.py"


def start_consumer(b: Broker, queue: str, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLE), queue, *args],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, RESTMQ_URL=f"http://127.0.0.1:{b.port}"),
        )


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_the_example_consumer_processes_slow_work_once_extending_its_lease(
    shared_broker, queue, tmp_path
):
    b = shared_broker
    keys = [post_value(b, queue, f"job {i}") for i in range(3)]
    log = tmp_path / "consumer.log"
    # each message takes 1.6 s under a 1 s lease: only extending keeps it
    consumer = start_consumer(b, queue, log, "--lease", "1", "--wait", "1", "--work", "1.6",
                              "--idle-exit", "1")  # fmt: skip
    assert consumer.wait(30) == 0
    seen = events(log)
    assert [(e["event"], e["key"], e["deliveries"]) for e in seen] == [
        (event, key, 1) for key in keys for event in ("got", "acked")
    ]
    stats = b.get(f"/stats/{queue}").json()
    assert (stats["len"], stats["leased"]) == (0, 0)


def test_a_killed_brokers_leases_are_handed_out_again_by_another_broker(
    broker_factory, valkey_factory
):
    server = valkey_factory()
    args = ("--redis-port", str(server.port))
    doomed, survivor = broker_factory(*args), broker_factory(*args)
    keys = [post_value(doomed, "work", f"m{i}") for i in range(5)]
    held = doomed.get("/q/work?n=5&lease=2").json()
    assert [m["key"] for m in held] == keys
    doomed.stop(signal.SIGKILL)
    # nothing to take until the leases run out; then a long poll on the survivor gets them
    response = survivor.get("/q/work?n=10&lease=30&wait=10", timeout=15)
    assert response.status == 200
    again = response.json()
    assert [(m["key"], m["deliveries"]) for m in again] == [(key, 2) for key in keys]
    receipts = "&".join(f"receipt={m['receipt']}" for m in again)
    assert all(r["acked"] for r in survivor.request("DELETE", f"/q/work?{receipts}").json())
    assert [server.command("EXISTS", key) for key in keys] == [0] * 5


def test_every_add_answered_200_survives_the_embedded_valkey_being_killed(broker_factory):
    b = broker_factory()
    accepted: list[str] = []
    refused = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            i += 1
            try:
                response = request(b.port, "POST", "/q/steady", form={"value": f"m{i}"}, timeout=5)
            except OSError:
                refused += 1
                continue
            if response.status == 200:
                accepted.append(response.text.strip())
            else:  # not stored (503), or not known to be (504): not counted as added
                assert response.status in (503, 504), response.body
                refused += 1

    with ThreadPoolExecutor(2) as pool:
        producers = [pool.submit(produce) for _ in range(2)]
        wait_for(lambda: len(accepted) >= 200, 15, what="a steady load")
        (pid,) = valkey_pids(b.data_dir)
        os.kill(pid, signal.SIGKILL)
        killed_at = len(accepted)
        wait_for(lambda: valkey_pids(b.data_dir) and valkey_pids(b.data_dir) != [pid], 15,
                 what="the embedded Valkey to restart")  # fmt: skip
        wait_for(lambda: len(accepted) >= killed_at + 200, 20, what="adds after the restart")
        stop.set()
        for producer in producers:
            producer.result(10)
    stored = set(b.redis("LRANGE", "steady:queue", 0, -1))
    missing = [key for key in accepted if key not in stored]
    assert not missing, f"{len(missing)} of {len(accepted)} acknowledged adds lost: {missing[:5]}"
    assert b.get("/stats/steady").json()["len"] >= len(accepted)


def test_chaos_killed_consumers_lose_nothing_and_duplicate_only_unacked_work(
    broker_factory, tmp_path
):
    b = broker_factory()
    queue, consumers_wanted, producers_wanted, per_producer = "chaos", 20, 20, 25
    rng = random.Random(7)
    logs: list[Path] = []
    killed: set[Path] = set()
    running: dict[int, tuple[subprocess.Popen, Path]] = {}

    def launch(slot: int) -> None:
        log = tmp_path / f"consumer-{len(logs)}.log"
        logs.append(log)
        args = ("--lease", "3", "--wait", "1", "--work", "0.2")  # busy about 2/3 of the time
        running[slot] = (start_consumer(b, queue, log, *args), log)

    def produce(n: int) -> list[str]:
        keys = []
        for i in range(per_producer):
            response = request(b.port, "POST", f"/q/{queue}", form={"value": f"p{n}-{i}"})
            assert response.status == 200, response.body
            keys.append(response.text.strip())
            time.sleep(random.random() * 0.6)
        return keys

    for slot in range(consumers_wanted):
        launch(slot)
    with ThreadPoolExecutor(producers_wanted) as pool:
        produced = [pool.submit(produce, n) for n in range(producers_wanted)]
        # crash consumers at random while they work, and start new ones in their place
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            time.sleep(0.3)
            slot = rng.randrange(consumers_wanted)
            proc, log = running[slot]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed.add(log)
            launch(slot)
        added = [key for future in produced for key in future.result(30)]
    try:
        # every message acked: none pending, none leased (killed holders' leases ran out)
        def all_acked() -> bool:
            stats = b.get(f"/stats/{queue}").json()
            return stats["len"] == 0 and stats["leased"] == 0

        wait_for(all_acked, 30, 0.2, "every message to be acked")
    finally:
        for proc, _ in running.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert len(added) == producers_wanted * per_producer
    assert [b.redis("EXISTS", key) for key in added] == [0] * len(added)  # all acked

    acks: dict[str, int] = {}
    unacked: list[tuple[Path, str]] = []  # deliveries processed but not acked by their taker
    for log in logs:
        seen = events(log)
        for i, event in enumerate(seen):
            if event["event"] == "acked":
                acks[event["key"]] = acks.get(event["key"], 0) + 1
            elif event["event"] == "got":
                after = seen[i + 1] if i + 1 < len(seen) else None
                if after is None or after["key"] != event["key"]:
                    unacked.append((log, event["key"]))
            else:
                raise AssertionError(f"a lease was lost by a live consumer: {event}")
    assert all(count == 1 for count in acks.values()), "a message was acked twice"
    for log, key in unacked:
        # only a consumer that died before acking leaves a delivery unacknowledged
        assert log in killed and events(log)[-1]["key"] == key, (log, key)
    died_mid_ack = {key for _, key in unacked} - set(acks)
    assert set(added) == set(acks) | died_mid_ack
    assert len(killed) >= 20
    redelivered = [e for log in logs for e in events(log) if e["deliveries"] > 1]
    assert redelivered, "no consumer was killed while it held a lease: the test proved nothing"
