"""What happens when things go wrong: slow Redis, full Redis, foreign keys, big batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.support import TWISTD, HttpStream, free_port, wait_for


@pytest.fixture
def external(broker_factory, valkey_factory):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port), "--redis-timeout", "0.5")
    return server, broker


def test_a_pop_that_redis_answers_late_puts_its_message_back(external, queue):
    server, broker = external
    key = broker.post(f"/q/{queue}", value="precious").text.strip()
    assert server.command("CLIENT", "PAUSE", "1500", "WRITE") == "OK"
    started = time.monotonic()
    answer = broker.get(f"/q/{queue}")
    assert answer.status == 503
    assert time.monotonic() - started < 2.0  # the spec: a 503 within 2 s, never a hang
    assert "did not answer" in answer.json()["error"]
    # Redis ran the pop once unpaused: the broker put the message back, not lost it.
    wait_for(lambda: "popped after their request gave up" in broker.log(), 10, what="late pop")
    wait_for(lambda: broker.get(f"/stats/{queue}").json().get("len") == 1, 10, what="requeue")
    assert broker.get(f"/q/{queue}").json() == {"key": key, "value": "precious", "count": 0}


def test_a_full_redis_answers_507_saying_so(external, queue):
    server, broker = external
    assert server.command("CONFIG", "SET", "maxmemory", "1") == "OK"
    try:
        answer = broker.post(f"/q/{queue}", value="no room")
        assert answer.status == 507
        assert answer.json() == {"error": "storage is full"}
        assert "Traceback" not in broker.log()
    finally:
        server.command("CONFIG", "SET", "maxmemory", "0")
    assert broker.post(f"/q/{queue}", value="room again").status == 200


def test_keys_written_by_something_else_give_409_not_500(shared_broker, queue):
    shared_broker.post(f"/q/{queue}", value="x")
    shared_broker.redis("DEL", f"{queue}:queue")
    shared_broker.redis("SET", f"{queue}:queue", "not a list")
    answer = shared_broker.get(f"/q/{queue}")
    assert answer.status == 409
    assert "another kind of value" in answer.json()["error"]
    # the listing, which is also the readiness answer, still works
    stats = shared_broker.get("/stats/")
    assert stats.status == 200
    assert stats.json()["queues"][queue]["len"] == 0
    shared_broker.redis("DEL", f"{queue}:queue")


def test_queue_names_that_would_overlap_status_keys_are_refused(shared_broker):
    answer = shared_broker.post("/q/queuestat:other", value="x")
    assert answer.status == 400
    assert "queuestat:" in answer.json()["error"]
    assert shared_broker.redis("EXISTS", "queuestat::other:queue") == 0


def test_wrong_redis_password_stops_the_start_with_a_clear_message(valkey_factory, tmp_path):
    server = valkey_factory(password="right")
    result = subprocess.run(
        [
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "restmq",
            "--port",
            str(free_port()),
            "--redis-port",
            str(server.port),
            "--redis-password",
            "wrong",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refused RestMQ" in result.stdout + result.stderr
    assert "WRONGPASS" in result.stdout + result.stderr


def test_a_batch_pop_stops_at_16_mib(shared_broker, queue):
    value = "v" * (6 * 1024 * 1024)
    for _ in range(4):
        assert shared_broker.post(f"/q/{queue}", value=value).status == 200
    batch = shared_broker.get(f"/q/{queue}?n=4")
    assert [len(m["value"]) for m in batch.json()] == [len(value)] * 3
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 1


def test_a_consumer_reading_a_big_backlog_at_full_speed_gets_all_of_it(broker_factory, queue):
    broker = broker_factory()
    value = "x" * 60_000
    keys = []
    for _ in range(10):  # 100 messages of 60 kB: 6 MB, more than --consumer-buffer's 4 MiB
        answer = broker.request(
            "POST",
            f"/q/{queue}",
            body=json.dumps({"values": [value] * 10}),
            headers={"Content-Type": "application/json"},
        )
        keys += answer.json()
    stream = HttpStream(broker.port, queue).start()
    got = [stream.next_message(timeout=20)["key"] for _ in range(len(keys))]
    assert got == keys
    assert "behind; disconnecting" not in broker.log()
    stream.close()


def test_the_lock_file_names_the_daemon_not_its_parent(tmp_path):
    pidfile = tmp_path / "twistd.pid"
    port = free_port()
    subprocess.run(
        [
            TWISTD,
            f"--pidfile={pidfile}",
            f"--logfile={tmp_path / 'log'}",
            "restmq",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    try:
        wait_for(pidfile.exists, 10, what="the pid file")
        daemon = int(pidfile.read_text())
        lock = tmp_path / "restmq-data" / "restmq.lock"
        wait_for(lambda: lock.read_text().strip() == str(daemon), 10, what="the lock pid")
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
        wait_for(lambda: not pidfile.exists(), 20, what="the daemon to stop")
