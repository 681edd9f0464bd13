"""The ``restmq`` client's leases, acks and long polls (``pop --lease``, ``pop --wait``, ``ack``),
against a real broker. Needs the broker's lease support: ``GET /q/<q>?lease=S[&n=N][&wait=S]``
and ``DELETE /q/<q>?receipt=R[&receipt=R2]``."""

from __future__ import annotations

import json
import subprocess
import time

from tests.support import STORAGE_MODES, broker_url, notice_listeners, run_cli, start_cli, wait_for


def rmq(broker, *args: str) -> subprocess.CompletedProcess:
    return run_cli(broker_url(broker), *args)


def wait_parked(broker, queue: str) -> None:
    """Return once a long poll waits on ``queue``: the broker subscribed to its channel."""
    wait_for(lambda: notice_listeners(broker, queue) >= 1, 10, what="a parked pop")


def error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@STORAGE_MODES
def test_pop_under_a_lease_prints_the_receipt_and_ack_deletes_the_message(shared_broker, queue):
    b = shared_broker
    rmq(b, "push", queue, "job")
    popped = rmq(b, "pop", "--lease", "30", queue)
    assert popped.returncode == 0, popped.stderr
    assert popped.stderr == ""  # no warning: the broker leased it
    receipt, value = popped.stdout.rstrip("\n").split("\t")
    assert value == "job"
    assert receipt
    stats = b.get(f"/stats/{queue}").json()
    assert (stats["len"], stats["leased"]) == (0, 1)

    acked = rmq(b, "ack", queue, receipt)
    assert (acked.returncode, acked.stdout) == (0, f"{b.key(queue, 1)}\n")
    assert b.get(f"/stats/{queue}").json()["leased"] == 0
    # a second ack of the same delivery finds no lease: exit 1, nothing deleted
    again = rmq(b, "ack", queue, receipt)
    assert again.returncode == 1
    assert receipt in error_line(again)


@STORAGE_MODES
def test_a_leased_batch_as_json_and_one_ack_for_all_of_it(shared_broker, queue):
    b = shared_broker
    rmq(b, "push", queue, "a", "b", "c")
    popped = rmq(b, "pop", "-n", "2", "--lease", "30", "--json", queue)
    assert popped.returncode == 0, popped.stderr
    messages = [json.loads(line) for line in popped.stdout.splitlines()]
    assert [m["value"] for m in messages] == ["a", "b"]
    assert all(m["lease"] == 30 and m["deliveries"] == 1 and m["receipt"] for m in messages)
    acked = rmq(b, "ack", queue, *(m["receipt"] for m in messages))
    assert (acked.returncode, acked.stdout.split()) == (0, [b.key(queue, 1), b.key(queue, 2)])
    assert b.get(f"/stats/{queue}").json()["len"] == 1


@STORAGE_MODES
def test_an_ack_after_the_lease_ran_out_exits_1_and_the_message_is_back(shared_broker, queue):
    b = shared_broker
    rmq(b, "push", queue, "slow job")
    receipt = rmq(b, "pop", "--lease", "1", queue).stdout.split("\t")[0]
    wait_for(lambda: b.get(f"/stats/{queue}").json()["len"] == 1, 10, what="the lease to end")
    late = rmq(b, "ack", queue, receipt)
    assert late.returncode == 1
    assert receipt in error_line(late)
    assert rmq(b, "pop", queue).stdout == "slow job\n"


@STORAGE_MODES
def test_acking_several_reports_the_gone_lease_and_acks_the_others(shared_broker, queue):
    b = shared_broker
    rmq(b, "push", queue, "long", "short")
    # The long lease first: a short one taken first could run out before the second pop
    # (a client takes a moment to start), which would then take the same message again.
    long, value = rmq(b, "pop", "--lease", "60", queue).stdout.rstrip("\n").split("\t")
    assert value == "long"
    short, value = rmq(b, "pop", "--lease", "1", queue).stdout.rstrip("\n").split("\t")
    assert value == "short"
    wait_for(lambda: b.get(f"/stats/{queue}").json()["len"] == 1, 10, what="the short lease")
    result = rmq(b, "ack", queue, short, long)
    assert result.returncode == 1
    assert result.stdout == f"{b.key(queue, 1)}\n"
    assert short in error_line(result)


@STORAGE_MODES
def test_pop_wait_answers_as_soon_as_a_message_arrives(shared_broker, queue):
    started = time.monotonic()
    proc = start_cli(broker_url(shared_broker), "pop", "--wait", "10", queue)
    try:
        wait_parked(shared_broker, queue)
        assert proc.poll() is None  # waiting, not answered empty
        rmq(shared_broker, "push", queue, "worth the wait")
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out, err) == (0, "worth the wait\n", "")
    assert time.monotonic() - started < 8


@STORAGE_MODES
def test_pop_wait_on_a_queue_that_stays_empty_exits_1_after_the_wait(shared_broker, queue):
    started = time.monotonic()
    result = rmq(shared_broker, "pop", "--wait", "1", queue)
    assert result.returncode == 1
    assert time.monotonic() - started >= 0.9
    assert f"queue {queue} is empty" in error_line(result)


@STORAGE_MODES
def test_pop_can_wait_for_a_message_and_lease_it(shared_broker, queue):
    proc = start_cli(broker_url(shared_broker), "pop", "--wait", "10", "--lease", "30", queue)
    try:
        wait_parked(shared_broker, queue)
        assert proc.poll() is None
        rmq(shared_broker, "push", queue, "leased when it came")
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    receipt, value = out.rstrip("\n").split("\t")
    assert value == "leased when it came"
    assert rmq(shared_broker, "ack", queue, receipt).returncode == 0
