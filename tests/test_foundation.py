"""The foundation: plugin, options, embedded and external storage, outages, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.support import TWISTD, free_port, pid_alive, valkey_pids, wait_for


def run_twistd(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([TWISTD, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_twistd_lists_the_restmq_plugin(tmp_path):
    result = run_twistd("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "restmq" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert "Unknown command" not in result.stdout + result.stderr


def help_entries(text: str) -> dict[str, str]:
    """Option name -> its whole help text, continuation lines joined."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            current = next(w for w in stripped.split() if w.startswith("--")).split("=")[0]
            entries[current] = stripped
        elif current and line.startswith(" " * 10) and stripped:
            entries[current] += " " + stripped
        else:
            current = None
    return entries


def test_restmq_help_explains_every_option_with_its_default(tmp_path):
    result = run_twistd("restmq", "--help", cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    entries = help_entries(out)
    for option, default in [
        ("--acl", "acl.conf"),
        ("--redis-port", "6379"),
        ("--redis-pool", "10"),
        ("--redis-db", "0"),
        ("--port", "8888"),
        ("--listen", "127.0.0.1"),
        ("--data-dir", "./restmq-data"),
    ]:
        assert f"[default: {default}]" in entries[option], option
    for option in ("--redis-host", "--redis-password", "--redis-socket", "--version"):
        assert len(entries[option]) > len(option) + 10, f"{option} is not explained"


def test_version_prints_the_restmq_version(tmp_path):
    from restmq import __version__

    result = run_twistd("restmq", "--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"RestMQ {__version__}"


def test_bad_option_values_are_refused_clearly(tmp_path):
    result = run_twistd("restmq", "--port", "http", cwd=tmp_path)
    assert result.returncode != 0
    assert "--port takes a whole number" in result.stdout + result.stderr
    result = run_twistd(
        "restmq", "--redis-socket", "/tmp/x.sock", "--redis-port", "7000", cwd=tmp_path
    )
    assert result.returncode != 0
    assert "either --redis-socket or --redis-host/--redis-port" in result.stdout + result.stderr


def test_a_bad_option_is_said_first_with_a_one_line_hint_not_the_whole_help(tmp_path):
    for args, error in [
        (("--port=abc",), "--port takes a whole number, not 'abc'"),
        (("--prot", "8080"), "option --prot not recognized"),
        (("--tls-cert", "cert.pem"), "--tls-cert and --tls-key go together: give both or neither"),
    ]:
        result = run_twistd("restmq", *args, cwd=tmp_path)
        assert result.returncode == 1, args
        assert result.stdout == "", args
        assert result.stderr.splitlines() == [
            f"twistd restmq: {error}",
            "Run 'twistd restmq --help' for the options.",
        ]


def test_embedded_mode_starts_serves_and_logs_what_it_does(broker_factory):
    broker = broker_factory()
    stats = broker.get("/stats/")
    assert stats.status == 200
    assert stats.json()["count"] == 0
    assert broker.post("/q/hello", value="world").text == "hello:1\r\n"
    assert (broker.data_dir / "valkey.sock").exists()
    assert valkey_pids(broker.data_dir), "the embedded valkey-server should be running"
    log = broker.log()
    from restmq import __version__

    assert f"RestMQ {__version__} starting" in log
    assert f"storage: embedded Valkey, data dir {broker.data_dir}" in log
    assert "storage connected" in log
    assert f"listening on http://127.0.0.1:{broker.port}/" in log


def test_sigterm_stops_broker_and_its_valkey(broker_factory):
    broker = broker_factory()
    server_pids = valkey_pids(broker.data_dir)
    assert len(server_pids) == 1
    # twistd re-raises the signal on its way out, as daemons should (systemd reads that as clean)
    assert broker.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert not any(pid_alive(pid) for pid in server_pids)
    log = broker.log()
    assert "embedded Valkey stopped (exit code 0)" in log
    assert "RestMQ stopped" in log
    assert log.index("HTTP port closed") < log.index("embedded Valkey stopped")


def test_sigint_stops_broker_and_its_valkey(broker_factory):
    broker = broker_factory()
    server_pids = valkey_pids(broker.data_dir)
    broker.stop(signal.SIGINT)
    assert not any(pid_alive(pid) for pid in server_pids)


def test_sigkill_of_twistd_leaves_no_valkey_behind(broker_factory):
    broker = broker_factory()
    server_pids = valkey_pids(broker.data_dir)
    assert server_pids
    broker.proc.kill()
    broker.proc.wait()
    wait_for(
        lambda: not any(pid_alive(pid) for pid in server_pids),
        timeout=5,
        what="the orphaned valkey-server to exit",
    )


def test_data_survives_a_restart(broker_factory, tmp_path):
    workdir = tmp_path / "persist"
    broker = broker_factory(workdir=workdir)
    keys = [broker.post("/q/durable", value=f"message {i}").text.strip() for i in range(5)]
    broker.post("/p/durable", policy="roundrobin")
    broker.stop()
    again = broker_factory(workdir=workdir)
    assert again.get("/p/durable").json()["value"] == "roundrobin"
    popped = [again.get("/q/durable").json() for _ in range(5)]
    assert [m["key"] for m in popped] == keys
    assert [m["value"] for m in popped] == [f"message {i}" for i in range(5)]
    # numbering goes on where it stopped
    assert again.post("/q/durable", value="next").text == "durable:6\r\n"


def test_second_broker_on_the_same_data_dir_refuses_to_start(broker_factory, tmp_path):
    workdir = tmp_path / "shared"
    first = broker_factory(workdir=workdir)
    second = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "restmq", "--port", str(free_port())],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    message = second.stdout + second.stderr
    assert "already in use by another RestMQ broker" in message
    assert str(first.proc.pid) in message
    assert "--data-dir" in message
    # the first broker is unharmed
    assert first.post("/q/still", value="here").status == 200


def test_external_mode_uses_the_named_server(broker_factory, valkey_factory):
    server = valkey_factory()
    broker = broker_factory("--redis-host", "127.0.0.1", "--redis-port", str(server.port))
    assert broker.post("/q/ext", value="v1").text == "ext:1\r\n"
    assert server.command("LRANGE", "ext:queue", "0", "-1") == ["ext:1"]
    assert server.command("GET", "ext:1") == "v1"
    assert not (broker.data_dir).exists(), "external mode must not create an embedded data dir"
    assert f"storage: external Redis at 127.0.0.1:{server.port}" in broker.log()


def test_external_mode_with_password_and_db(broker_factory, valkey_factory):
    server = valkey_factory(password="s3cret")
    broker = broker_factory(
        "--redis-port", str(server.port), "--redis-password", "s3cret", "--redis-db", "3"
    )
    broker.post("/q/secure", value="x")
    assert server.command("SELECT", "3") == "OK"
    from tests.support import redis_command

    assert redis_command(("127.0.0.1", server.port), "EXISTS", "secure:1", password="s3cret") == 0
    # (SELECT applies per connection; check db 3 explicitly)
    import socket

    from tests.support import _read_reply, _send

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        stream = sock.makefile("rwb")
        for cmd in (["AUTH", "s3cret"], ["SELECT", "3"]):
            _send(stream, cmd)
            _read_reply(stream)
        _send(stream, ["GET", "secure:1"])
        assert _read_reply(stream) == "x"


def test_external_server_outage_gives_fast_503_and_recovers(broker_factory, valkey_factory):
    server = valkey_factory()
    broker = broker_factory("--redis-port", str(server.port))
    assert broker.post("/q/outage", value="before").status == 200
    server.stop(signal.SIGKILL)
    for method, path, form in [("POST", "/q/outage", {"value": "x"}), ("GET", "/q/outage", None)]:
        started = time.monotonic()
        response = broker.request(method, path, form=form)
        assert time.monotonic() - started < 2.0
        assert response.status == 503
        assert "storage unavailable" in response.json()["error"]
    # same port, same data directory: the server comes back with its data
    server.start()
    wait_for(lambda: broker.get("/stats/outage").status == 200, timeout=10, what="recovery")
    assert broker.get("/q/outage").json()["value"] == "before"
    assert "storage lost" in broker.log()
    assert "storage reconnected" in broker.log()


def served(broker, method: str, path: str, **kwargs):
    """The broker's answer once storage is back (503s while it restarts are retried)."""
    answers = []

    def attempt() -> bool:
        answers.append(broker.request(method, path, **kwargs))
        return answers[-1].status != 503

    wait_for(attempt, timeout=15, interval=0.1, what=f"{method} {path} to be served")
    return answers[-1]


# Why a 503 came: the write never reached Redis, so it was certainly not stored.
# (A write whose answer was lost after it was sent is a 504: it may have been stored.)
NOTHING_STORED = ("no connection to", "Redis is loading its data")


def test_embedded_valkey_killed_is_restarted_and_service_resumes(broker_factory):
    broker = broker_factory()
    kept = broker.post("/q/phoenix", value="kept")
    assert kept.status == 200
    # No wait for everysec: Valkey writes its AOF before it answers, and a SIGKILL of
    # the server leaves what it wrote in the OS cache.
    [pid] = valkey_pids(broker.data_dir)
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    during = broker.post("/q/phoenix", value="during")
    assert time.monotonic() - started < 2.0
    if during.status == 200:  # the restart was already done: it must be kept
        stored = True
    else:
        # 503: it never reached Redis; 504: it did, and its answer was lost (unknown fate)
        assert during.status in (503, 504), during.text
        error = during.json()["error"]
        if during.status == 503:
            assert error.startswith("storage unavailable"), error
            assert any(text in error for text in NOTHING_STORED), error
            stored = False
        else:
            assert error.startswith("stored state unknown"), error
            stored = None
    wait_for(lambda: broker.get("/stats/").status == 200, timeout=10, what="recovery")
    # What a user checks: the message posted before the crash comes out first...
    first = served(broker, "GET", "/q/phoenix")
    assert first.status == 200, first.text
    assert (first.json()["key"], first.json()["value"]) == (kept.text.strip(), "kept")
    # ...then the one posted during it, if and only if the broker said it was stored.
    second = served(broker, "GET", "/q/phoenix")
    if stored is None:  # either is right, but never anything else
        stored = second.status == 200
    if stored:
        assert second.status == 200, second.text
        assert second.json()["value"] == "during"
        if during.status == 200:
            assert second.json()["key"] == during.text.strip()
        second = served(broker, "GET", "/q/phoenix")
    assert second.status == 204, second.text  # nothing else is there (204: empty)
    log = broker.log()
    assert "embedded Valkey died unexpectedly" in log
    assert "embedded Valkey restarted" in log
    assert valkey_pids(broker.data_dir) and valkey_pids(broker.data_dir) != [pid]
    # Service goes on as usual after the restart.
    assert broker.post("/q/phoenix", value="after").status == 200
    assert broker.get("/q/phoenix").json()["value"] == "after"


def test_port_already_taken_is_reported_and_exits_nonzero(broker_factory, tmp_path):
    first = broker_factory()
    second = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "restmq", "--port", str(first.port)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert "RestMQ could not start" in second.stdout + second.stderr
    assert not valkey_pids(tmp_path / "restmq-data"), "the failed broker left its valkey running"
