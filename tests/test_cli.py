"""The ``restmq`` command line client, run as a user runs it, against real brokers."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import (
    RESTMQ_CLI,
    STORAGE_MODES,
    Broker,
    basic,
    broker_url,
    client_env,
    default_sigint,
    free_port,
    run_cli,
    start_cli,
    wait_for,
    wait_healthy,
)


@pytest.fixture
def rmq(shared_broker):
    """Run ``restmq ARGS...`` against the shared broker."""

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_cli(broker_url(shared_broker), *args, **kwargs)

    return run


def lines(text: str) -> list[str]:
    return text.splitlines()


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A failure says what went wrong in one line on stderr, never with a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    error = [line for line in lines(result.stderr) if line.startswith("Error:")]
    assert len(error) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error[0], result.stderr


# -- push -----------------------------------------------------------------------------------


@STORAGE_MODES
def test_push_stores_each_argument_and_prints_its_key(rmq, shared_broker, queue):
    result = rmq("push", queue, "first", "second message")
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [shared_broker.key(queue, 1), shared_broker.key(queue, 2)]
    assert shared_broker.get(f"/q/{queue}").json()["value"] == "first"
    assert shared_broker.get(f"/q/{queue}").json()["value"] == "second message"


@STORAGE_MODES
def test_push_reads_one_message_per_line_and_sends_batches_in_order(rmq, shared_broker, queue):
    text = "".join(f"line {i}\n" for i in range(1, 8)) + "\n\nlast line without newline"
    result = rmq("push", "--batch", "3", queue, input=text)
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [shared_broker.key(queue, i) for i in range(1, 9)]
    popped = shared_broker.get(f"/q/{queue}?n=100").json()
    assert [m["value"] for m in popped] == [f"line {i}" for i in range(1, 8)] + [
        "last line without newline"
    ]


@STORAGE_MODES
def test_push_quiet_prints_nothing_and_ttl_reaches_the_broker(rmq, shared_broker, queue):
    result = rmq("push", "-q", "--ttl", "1", queue, "short-lived")
    assert (result.returncode, result.stdout) == (0, "")
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 1
    # The ttl running out is what is checked, so time must pass; polling with GET instead
    # would pop the message while it is still alive.
    time.sleep(1.5)
    assert shared_broker.get(f"/q/{queue}").status == 204


def test_push_shows_a_progress_bar_when_stderr_is_a_terminal(shared_broker, queue):
    controller, terminal = pty.openpty()
    proc = start_cli(
        broker_url(shared_broker),
        "push", "--batch", "100", queue,
        stdin=subprocess.PIPE,
        stderr=terminal,
        text=False,
    )  # fmt: skip
    os.close(terminal)
    out, _ = proc.communicate("".join(f"{i}\n" for i in range(1000)).encode(), timeout=60)
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
    assert proc.returncode == 0
    assert len(out.splitlines()) == 1000  # stdout is a pipe: the keys still go there
    assert b"pushing to " + queue.encode() + b": 1000 messages" in shown
    assert b"1000 messages stored in " + queue.encode() in shown
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 1000


def test_push_with_nothing_to_send_is_a_usage_error(rmq, queue):
    result = rmq("push", queue, input="\n\n")
    assert result.returncode == 2
    assert_one_error_line(result, "no message to push")


# -- pop --------------------------------------------------------------------------------------


@STORAGE_MODES
def test_pop_prints_the_oldest_value_and_exits_1_once_the_queue_is_empty(rmq, queue):
    rmq("push", queue, "a", "b")
    first = rmq("pop", queue)
    assert (first.returncode, first.stdout) == (0, "a\n")
    assert rmq("pop", queue).stdout == "b\n"
    empty = rmq("pop", queue)
    assert (empty.returncode, empty.stdout) == (1, "")
    assert_one_error_line(empty, f"queue {queue} is empty")


@STORAGE_MODES
def test_pop_n_takes_a_batch_and_json_shows_whole_messages(rmq, shared_broker, queue):
    rmq("push", queue, "1", "2", "3", "4")
    batch = rmq("pop", "-n", "3", queue)
    assert lines(batch.stdout) == ["1", "2", "3"]
    as_json = rmq("pop", "-n", "3", "--json", queue)
    assert [json.loads(line) for line in lines(as_json.stdout)] == [
        {"key": shared_broker.key(queue, 4), "value": "4", "count": 0}
    ]
    empty = rmq("pop", "-n", "3", queue)
    assert empty.returncode == 1


def test_pop_checks_its_options_before_calling_the_broker(rmq, queue):
    for args in (["-n", "0"], ["-n", "1001"], ["--lease", "0"], ["--wait", "61"]):
        result = rmq("pop", queue, *args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr


# -- tail -------------------------------------------------------------------------------------


@STORAGE_MODES
def test_tail_prints_the_backlog_then_what_arrives(rmq, shared_broker, queue):
    rmq("push", queue, "waiting")
    proc = start_cli(broker_url(shared_broker), "tail", "--count", "2", queue)
    try:
        assert proc.stdout.readline() == "waiting\n"
        wait_for(lambda: shared_broker.get(f"/stats/{queue}").json()["consumers"] == 1)
        rmq("push", queue, "new")
        assert proc.stdout.readline() == "new\n"
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr.read() == ""


@STORAGE_MODES
def test_tail_json_prints_each_message_object(rmq, shared_broker, queue):
    rmq("push", queue, "x", "y")
    result = rmq("tail", "--json", "--count", "2", queue)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in lines(result.stdout)] == [
        {"key": shared_broker.key(queue, 1), "value": "x"},
        {"key": shared_broker.key(queue, 2), "value": "y"},
    ]


@STORAGE_MODES
def test_tail_exits_1_when_nothing_arrives_in_time(rmq, queue):
    started = time.monotonic()
    result = rmq("tail", "--timeout", "1", queue)
    assert result.returncode == 1
    assert 0.9 < time.monotonic() - started < 10
    assert_one_error_line(result, "no message arrived before 1 s passed")


@STORAGE_MODES
def test_tail_ends_when_the_queue_is_purged(rmq, shared_broker, queue):
    proc = start_cli(broker_url(shared_broker), "tail", "--count", "5", queue)
    try:
        wait_for(lambda: shared_broker.get(f"/stats/{queue}").json()["consumers"] == 1)
        rmq("push", queue, "only one")
        assert proc.stdout.readline() == "only one\n"
        assert rmq("purge", queue).returncode == 0
        assert proc.wait(10) == 1
    finally:
        proc.kill()
        proc.wait()
    assert "only 1 of 5 messages arrived before the stream ended" in proc.stderr.read()


def test_tail_into_a_pipe_that_closes_ends_quietly(shared_broker, queue):
    run_cli(broker_url(shared_broker), "push", queue, "one")
    proc = subprocess.Popen(
        ["bash", "-c", f"set -o pipefail; '{RESTMQ_CLI}' tail '{queue}' | head -n 1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env(broker_url(shared_broker)),
    )
    try:
        assert proc.stdout.readline() == "one\n"
        # once head has left, the next message goes into a closed pipe
        wait_for(lambda: not running_child(proc.pid, "head"), 10, what="head to exit")
        run_cli(broker_url(shared_broker), "push", queue, "two", "three")
        assert proc.wait(10) == 0  # pipefail: tail's own exit status counts
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr.read() == ""


def running_child(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a child called ``name`` that has not exited yet."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:  # reaped meanwhile
            continue
        # "<pid> (<command>) <state> ...": the command may hold spaces or parentheses
        command, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        if command == name and state != "Z":
            return True
    return False


def test_ctrl_c_ends_tail_without_a_traceback(shared_broker, queue):
    proc = start_cli(broker_url(shared_broker), "tail", queue, preexec_fn=default_sigint)
    try:
        wait_for(lambda: shared_broker.get(f"/stats/{queue}").json()["consumers"] == 1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in proc.stderr.read()


# -- stats, purge, policy, start, stop, health --------------------------------------------


@STORAGE_MODES
def test_stats_shows_every_queue_as_a_table(rmq, queue):
    rmq("push", queue, "1", "2", "3")
    rmq("stop", queue)
    rmq("policy", queue, "roundrobin")
    result = rmq("stats")
    assert result.returncode == 0, result.stderr
    rows = lines(result.stdout)
    # the broker's lease figures follow as columns (DEAD too, once a dead-letter queue exists)
    header = rows[0].split()
    assert header[:6] == ["QUEUE", "LEN", "STATUS", "POLICY", "CONSUMERS", "LEASED"]
    assert set(header[6:]) <= {"DEAD"}
    ours = [row.split() for row in rows[1:] if row.split()[0] == queue]
    assert [row[:6] for row in ours] == [[queue, "3", "stopped", "roundrobin", "0", "0"]]
    one = rmq("stats", queue)
    assert lines(one.stdout)[0].split() == ["QUEUE", "LEN", "CONSUMERS", "LEASED"]
    assert lines(one.stdout)[1].split() == [queue, "3", "0", "0"]
    raw = json.loads(rmq("stats", "--json", queue).stdout)
    assert (raw["queue"], raw["len"]) == (queue, 3)


@STORAGE_MODES
def test_purge_empties_the_queue(rmq, shared_broker, queue):
    rmq("push", queue, "1", "2")
    result = rmq("purge", queue)
    assert (result.returncode, result.stdout) == (0, f"purged {queue}\n")
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0
    again = rmq("purge", queue)
    assert (again.returncode, again.stdout) == (0, f"purged {queue} (it was empty)\n")


@STORAGE_MODES
def test_policy_prints_and_sets_the_delivery_policy(rmq, shared_broker, queue):
    assert rmq("policy", queue).stdout == "broadcast\n"
    assert rmq("policy", queue, "roundrobin").stdout == "roundrobin\n"
    assert shared_broker.get(f"/p/{queue}").json()["value"] == "roundrobin"
    assert rmq("policy", queue).stdout == "roundrobin\n"
    wrong = rmq("policy", queue, "fifo")
    assert wrong.returncode == 2
    assert "'fifo' is not one of 'broadcast', 'roundrobin'" in wrong.stderr


@STORAGE_MODES
def test_stop_and_start_switch_delivery_to_streams(rmq, shared_broker, queue):
    assert rmq("stop", queue).stdout == f"{queue} stopped\n"
    assert shared_broker.get(f"/control/{queue}").json()["status"]["status"] == 0
    assert rmq("start", queue).stdout == f"{queue} started\n"
    assert shared_broker.get(f"/control/{queue}").json()["status"]["status"] == 1


@STORAGE_MODES
def test_health_reports_a_broker_that_can_serve(rmq):
    result = rmq("health")
    assert result.returncode == 0
    assert result.stdout.startswith("ok: storage up, RestMQ ")


# -- options, help, and every exit status -------------------------------------------------

COMMANDS = ["push", "pop", "ack", "tail", "stats", "purge", "policy", "start", "stop", "health"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command):
    result = run_cli("http://127.0.0.1:1", command, "--help")
    assert result.returncode == 0
    assert f"Usage: restmq {command}" in result.stdout
    assert "Exit status:" in result.stdout


def test_the_url_comes_from_the_option_or_restmq_url(shared_broker, queue):
    # RESTMQ_URL names a port nobody listens on; --url wins over it
    result = run_cli(f"http://127.0.0.1:{free_port()}", "--url", broker_url(shared_broker), "stats")
    assert result.returncode == 0, result.stderr


def test_usage_errors_exit_2(rmq, queue):
    for args in (["frobnicate"], ["pop"], ["ack", queue], ["--url", "ftp://x", "stats"]):
        result = rmq(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr


def test_a_request_the_broker_refuses_exits_2_with_its_error(rmq):
    result = rmq("push", "no spaces allowed", "x")
    assert result.returncode == 2
    assert_one_error_line(result, "(400)", "invalid queue name 'no spaces allowed'")


def test_an_unreachable_broker_exits_3(queue):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["push", queue, "x"], ["pop", queue], ["tail", queue], ["stats"]):
        result = run_cli(url, *args)
        assert result.returncode == 3, args
        assert_one_error_line(result, f"cannot reach the broker at {url}")


def test_a_broker_that_does_not_answer_in_time_exits_3(queue):
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = run_cli(url, "--timeout", "1", "pop", queue)
    assert result.returncode == 3
    assert time.monotonic() - started < 10
    assert_one_error_line(result, f"the broker at {url} did not answer in time")


def test_a_broker_without_storage_exits_3_with_its_error(broker_factory, valkey_factory, queue):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port))
    server.stop()
    wait_for(lambda: broker.get("/health").status == 503, timeout=10, what="the outage")
    for args in (["push", queue, "x"], ["pop", queue], ["stats"], ["health"]):
        result = run_cli(broker_url(broker), *args)
        assert result.returncode == 3, args
        assert_one_error_line(result, "(503)", "storage unavailable")


GUARDED_ACL = """\
[rest:producer]
username = admin
password = s3cret

[rest:consumer]
username = admin
password = s3cret

[comet:consumer]
hosts_allow = 127.0.0.2
hosts_deny = all
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A broker whose acl.conf wants a password, and refuses streams to 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("cli-acl")
    (workdir / "acl.conf").write_text(GUARDED_ACL)
    broker = Broker(workdir).start(wait=False)
    try:
        wait_healthy(broker)
        yield broker
    finally:
        broker.stop()


def test_refused_requests_exit_4(guarded, queue):
    url = broker_url(guarded)
    for args in (["push", queue, "x"], ["pop", queue], ["stats"], ["purge", queue]):
        result = run_cli(url, *args)
        assert result.returncode == 4, args
        assert_one_error_line(result, "(401)", "authentication required")
    wrong = run_cli(url, "--user", "admin", "--password", "nope", "stats")
    assert wrong.returncode == 4
    assert_one_error_line(wrong, "(401)", "wrong username or password")
    address = run_cli(url, "--user", "admin", "--password", "s3cret", "tail", queue)
    assert address.returncode == 4
    assert_one_error_line(address, "(403)", "access from 127.0.0.1 is not allowed")


def test_credentials_come_from_options_or_the_environment(guarded, queue):
    url = broker_url(guarded)
    pushed = run_cli(url, "--user", "admin", "--password", "s3cret", "push", queue, "v")
    assert (pushed.returncode, pushed.stdout) == (0, f"{queue}:1\n")
    env = {"RESTMQ_USER": "admin", "RESTMQ_PASSWORD": "s3cret"}
    popped = run_cli(url, "pop", queue, env=env)
    assert (popped.returncode, popped.stdout) == (0, "v\n")
    assert guarded.get(f"/stats/{queue}", headers=basic("admin", "s3cret")).status == 200
    # half a pair is a usage error, not a silent anonymous request
    alone = run_cli(url, "--user", "admin", "stats")
    assert alone.returncode == 2
