"""What ``restmq push`` gets from the Python client and the broker's messaging semantics:
``--delay`` holds messages back, and a batch whose answers were lost is tried again with
its Idempotency-Key and stored once."""

from __future__ import annotations

import subprocess

from tests.support import STORAGE_MODES, broker_url, run_cli, start_cli, take_all

#: the embedded Valkey runs no write while paused so; a broker's add then times out (504)
PAUSE_WRITES = ("CLIENT", "PAUSE", "60000", "WRITE")


def rmq(broker, *args: str) -> subprocess.CompletedProcess:
    return run_cli(broker_url(broker), *args)


@STORAGE_MODES
def test_push_delay_stores_messages_that_no_take_sees_until_they_are_due(shared_broker, queue):
    b = shared_broker
    later = f"{queue}-later"
    pushed = rmq(b, "push", "--delay", "3600", later, "in an hour", "also")
    assert (pushed.returncode, pushed.stdout.split()) == (0, [b.key(later, 1), b.key(later, 2)])
    empty = rmq(b, "pop", later)
    assert empty.returncode == 1
    figures = b.get(f"/stats/{later}").json()
    assert (figures["len"], figures["delayed"]) == (0, 2)

    soon = rmq(b, "push", "--delay", "1", queue, "in a second")
    assert soon.returncode == 0, soon.stderr
    # the broker's sweep hands a due message to a waiting pop, no second take needed
    due = rmq(b, "pop", "--wait", "10", queue)
    assert (due.returncode, due.stdout) == (0, "in a second\n")


def test_push_delay_out_of_range_is_a_usage_error(shared_broker, queue):
    for delay in ("0", "604801", "soon"):
        result = rmq(shared_broker, "push", "--delay", delay, queue, "x")
        assert result.returncode == 2, delay
        assert "Traceback" not in result.stderr
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0


def test_a_push_whose_answers_are_lost_is_retried_and_stored_once(broker_factory, queue):
    broker = broker_factory("--redis-timeout", "0.3")
    assert broker.redis(*PAUSE_WRITES) == "OK"
    pushing = start_cli(broker_url(broker), "--retries", "20", "push", queue, "a", "b")
    try:
        # Two attempts reached Valkey and wait there, their answers lost (504): each will
        # run once Valkey writes again, and only one may store the batch.
        warnings = []
        while len(warnings) < 2:
            line = pushing.stderr.readline()
            assert line, f"the push ended without retrying: {warnings}"
            if "answered 504; retry" in line:
                warnings.append(line)
    finally:
        broker.redis("CLIENT", "UNPAUSE")
    out, err = pushing.communicate(timeout=60)
    assert pushing.returncode == 0, err
    assert all(line.startswith("Warning: POST /q/") for line in warnings)
    assert out.split() == [broker.key(queue, 1), broker.key(queue, 2)]
    assert [m["value"] for m in take_all(broker, queue)] == ["a", "b"]
