"""``restmq copy``: queued messages moved between two brokers on two stores (a standalone
Valkey, a Valkey Cluster), as a user runs it; nothing lost, duplicates only in the batch
in flight at an interruption. Keys differ between the stores: bodies are compared."""

from __future__ import annotations

import os
import pty
import signal
import subprocess

import pytest

from tests.support import (
    basic,
    broker_url,
    free_port,
    post_json,
    run_cli,
    start_cli,
    storage_args,
    take_all,
    wait_for,
    wait_healthy,
)


@pytest.fixture
def two_brokers(request, broker_factory):
    """A broker on its embedded Valkey, and one on the session Valkey Cluster."""
    return broker_factory(), broker_factory(*storage_args("cluster", request))


def push_all(broker, queue: str, values: list[str]) -> None:
    for start in range(0, len(values), 1000):
        answer = post_json(broker, f"/q/{queue}", {"values": values[start : start + 1000]})
        assert answer.status == 200, answer.text


def copy(source, target, *args: str) -> subprocess.CompletedProcess:
    return run_cli(broker_url(source), "copy", "--to", broker_url(target), *args)


def figures(broker, queue: str) -> dict:
    return broker.get(f"/stats/{queue}").json()


def queue_settings(broker, prefix: str) -> dict[str, tuple]:
    """Every queue's (status, policy, max_deliveries) as ``/stats/`` and ``/p/`` show them,
    of the queues whose names start with ``prefix`` (a cluster is shared by other tests)."""
    listed = broker.get("/stats/").json()["queues"]
    return {
        name: (row["status"], row["policy"], broker.get(f"/p/{name}").json().get("max_deliveries"))
        for name, row in listed.items()
        if name.startswith(prefix)
    }


def error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_every_queue_goes_there_and_back_in_order_with_its_settings(two_brokers, queue):
    """Standalone -> cluster -> standalone: 10,000 messages of three queues."""
    a, b = two_brokers
    jobs_q, dead_q, mail_q = f"{queue}-jobs", f"{queue}-jobs:dead", f"{queue}-mail"
    # jobs:dead, a dead-letter queue: two messages that used up their one delivery
    assert a.post(f"/p/{jobs_q}", max_deliveries="1").status == 200
    push_all(a, jobs_q, ["dead 1", "dead 2"])
    for message in a.get(f"/q/{jobs_q}?n=2&lease=30").json():
        a.post(f"/q/{jobs_q}?receipt={message['receipt']}&lease=0")
    wait_for(lambda: figures(a, jobs_q).get("dead") == 2, what="the dead letters")
    assert a.post(f"/p/{jobs_q}", max_deliveries="3").status == 200
    jobs = [f"job {i}" for i in range(5000)] + ['{"id": 7}', "héllo ✓", "two\nlines", " x "]
    mail = [f"mail {i}" for i in range(10_000 - len(jobs) - 2)]
    push_all(a, jobs_q, jobs)
    push_all(a, mail_q, mail)
    assert a.post(f"/p/{mail_q}", policy="roundrobin").status == 200
    assert a.post(f"/control/{mail_q}", status="stop").status == 200
    settings = queue_settings(a, queue)
    assert settings[mail_q] == (0, 2, None) and settings[jobs_q] == (1, 1, 3)

    there = copy(a, b)
    assert there.returncode == 0, there.stderr
    assert there.stdout.splitlines()[:3] == [
        f"{jobs_q}: {len(jobs)} messages moved",
        f"{dead_q}: 2 messages moved",
        f"{mail_q}: {len(mail)} messages moved",
    ]
    assert there.stdout.splitlines()[3].startswith("copied 3 queues, 10000 messages moved in ")
    assert queue_settings(b, queue) == settings
    assert [figures(b, q)["len"] for q in (jobs_q, dead_q, mail_q)] == [
        len(jobs),
        2,
        len(mail),
    ]
    for name in (jobs_q, dead_q, mail_q):  # the source is emptied, nothing left leased
        assert (figures(a, name)["len"], figures(a, name)["leased"]) == (0, 0)

    back = copy(b, a, mail_q, jobs_q, dead_q)  # named: in the order given
    assert back.returncode == 0, back.stderr
    assert back.stdout.splitlines()[:3] == [
        f"{mail_q}: {len(mail)} messages moved",
        f"{jobs_q}: {len(jobs)} messages moved",
        f"{dead_q}: 2 messages moved",
    ]
    assert queue_settings(a, queue) == settings
    assert [m["value"] for m in take_all(a, jobs_q)] == jobs
    assert [m["value"] for m in take_all(a, dead_q)] == ["dead 1", "dead 2"]
    assert [m["value"] for m in take_all(a, mail_q)] == mail
    assert all(figures(b, name)["len"] == 0 for name in (jobs_q, dead_q, mail_q))


def test_an_interrupted_copy_rerun_loses_nothing_and_repeats_at_most_the_batch_in_flight(
    two_brokers, queue
):
    a, b = two_brokers
    values = [f"m{i}" for i in range(5000)]
    push_all(a, queue, values)
    batch = 50
    args = ("copy", "--to", broker_url(b), "--batch", str(batch), "--lease", "3", queue)
    killed = start_cli(broker_url(a), *args)
    try:
        wait_for(lambda: figures(b, queue)["len"] >= 500, 30, what="some batches at the target")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=10)
    at_target = figures(b, queue)["len"]
    assert at_target < len(values), "the copy ended before it was interrupted"
    # the batch in flight comes back at the source once its leases run out
    wait_for(lambda: figures(a, queue)["leased"] == 0, 15, what="the leases to run out")
    left = figures(a, queue)["len"]
    assert left + at_target >= len(values)

    rerun = run_cli(broker_url(a), *args)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"{queue}: {left} messages moved\n")
    assert (figures(a, queue)["len"], figures(a, queue)["leased"]) == (0, 0)
    copied = [m["value"] for m in take_all(b, queue)]
    # The first run stored values[:at_target]; the source kept values[k:], the batch whose
    # ack never came included; the rerun stored those. Only that batch is there twice.
    k = len(values) - left
    assert 0 <= at_target - k <= batch
    assert copied == values[:at_target] + values[k:]


def test_an_unreachable_target_exits_3_and_takes_nothing(shared_broker, queue):
    push_all(shared_broker, queue, ["a", "b", "c"])
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli(broker_url(shared_broker), "copy", "--to", url, queue)
    assert result.returncode == 3
    assert error_line(result) == (
        f"Error: target: cannot reach the broker at {url}: [Errno 111] Connection refused"
    )
    assert (figures(shared_broker, queue)["len"], figures(shared_broker, queue)["leased"]) == (3, 0)
    assert [m["value"] for m in take_all(shared_broker, queue)] == ["a", "b", "c"]


def test_a_target_that_dies_mid_copy_gets_the_batch_back_at_the_source_at_once(
    broker_factory, valkey_factory, shared_broker, queue
):
    server = valkey_factory()
    target = broker_factory("--redis-port", str(server.port))
    values = [f"m{i}" for i in range(20_000)]
    push_all(shared_broker, queue, values)
    copying = start_cli(
        broker_url(shared_broker), "copy", "--to", broker_url(target), "--lease", "600", queue
    )
    wait_for(lambda: figures(target, queue)["len"] >= 200, 30, what="some batches at the target")
    target.stop(signal.SIGKILL)
    _, err = copying.communicate(timeout=30)
    assert copying.returncode == 3, err
    assert f"Error: target: cannot reach the broker at {broker_url(target)}" in err
    assert "messages moved before it; the batch being copied is back at the source)" in err
    # released, not left to a ten-minute lease: every message is at one of the two stores
    assert figures(shared_broker, queue)["leased"] == 0
    left = [m["value"] for m in take_all(shared_broker, queue)]
    stored = [m["value"] for m in take_all(broker_factory("--redis-port", str(server.port)), queue)]
    # the target has values[:j], the source values[k:] (the released batch at its head)
    k = len(values) - len(left)
    assert stored == values[: len(stored)] and left == values[k:]
    assert 0 <= len(stored) - k <= 100  # at most the batch in flight is in both


def test_unknown_queue_names_are_refused_before_anything_moves(shared_broker, queue):
    push_all(shared_broker, queue, ["kept"])
    target = f"http://127.0.0.1:{free_port()}"  # never asked: the names are checked first
    result = run_cli(broker_url(shared_broker), "copy", "--to", target, queue, "no-such-queue")
    assert result.returncode == 2
    assert error_line(result) == (
        f"Error: no queue no-such-queue at {broker_url(shared_broker)}"
        f" (restmq --url {broker_url(shared_broker)} stats lists its queues)"
    )
    assert (figures(shared_broker, queue)["len"], figures(shared_broker, queue)["leased"]) == (1, 0)


def test_the_same_broker_on_both_sides_is_refused(shared_broker, queue):
    push_all(shared_broker, queue, ["kept"])
    result = copy(shared_broker, shared_broker, queue)
    assert result.returncode == 2
    assert "--from and --to are the same broker" in error_line(result)
    assert figures(shared_broker, queue)["len"] == 1


TARGET_ACL = """\
[rest:producer]
username = mover
password = s3cret

[rest:consumer]
username = mover
password = s3cret
"""


def test_the_target_may_want_credentials_of_its_own(broker_factory, shared_broker, queue, tmp_path):
    (tmp_path / "acl.conf").write_text(TARGET_ACL)
    target = broker_factory(workdir=tmp_path, wait=False)
    wait_healthy(target)
    push_all(shared_broker, queue, ["a", "b"])

    refused = copy(shared_broker, target, queue)
    assert refused.returncode == 4
    assert error_line(refused).startswith(f"Error: target {broker_url(target)}: refused by the")
    assert (figures(shared_broker, queue)["len"], figures(shared_broker, queue)["leased"]) == (2, 0)

    moved = copy(shared_broker, target, "--to-user", "mover", "--to-password", "s3cret", queue)
    assert moved.returncode == 0, moved.stderr
    assert figures(shared_broker, queue)["len"] == 0
    taken = target.get(f"/q/{queue}?n=10", headers=basic("mover", "s3cret")).json()
    assert [m["value"] for m in taken] == ["a", "b"]


def test_a_terminal_shows_a_progress_bar_per_queue(broker_factory, shared_broker, queue):
    target = broker_factory()
    push_all(shared_broker, queue, [str(i) for i in range(1000)])
    controller, terminal = pty.openpty()
    proc = start_cli(
        broker_url(shared_broker), "copy", "--to", broker_url(target), queue, stderr=terminal
    )
    os.close(terminal)
    out, _ = proc.communicate(timeout=60)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert proc.returncode == 0, shown
    assert f"copying {queue}:".encode() in shown and b"1000/1000" in shown
    assert out.splitlines()[0] == f"{queue}: 1000 messages moved"
    assert figures(target, queue)["len"] == 1000
