"""start_scripts/restmq_server and the systemd unit in contrib/systemd, run for real."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    ROOT,
    TWISTD,
    Broker,
    free_port,
    pid_alive,
    redis_command,
    request,
    valkey_binary,
    valkey_pids,
    wait_for,
)

SCRIPT = ROOT / "start_scripts" / "restmq_server"
UNIT = ROOT / "contrib" / "systemd" / "restmq.service"
VARIABLES = [
    "RESTMQ_PORT",
    "RESTMQ_LISTEN",
    "RESTMQ_REDIS_HOST",
    "RESTMQ_REDIS_PORT",
    "RESTMQ_REDIS_SOCKET",
    "RESTMQ_REDIS_PASSWORD",
    "RESTMQ_DATA_DIR",
    "RESTMQ_ACL",
    "RESTMQ_PIDFILE",
    "RESTMQ_WORKERS",
]


@dataclass
class ScriptBroker(Broker):
    """A broker started through start_scripts/restmq_server, configured by ``env``."""

    host: str = "127.0.0.1"

    def command(self) -> list[str]:
        return [str(SCRIPT), *self.args]

    @property
    def data_dir(self) -> Path:
        return Path((self.env or {}).get("RESTMQ_DATA_DIR") or self.workdir / "restmq-data")

    def request(self, method: str, path: str, **kwargs):
        return request(self.port, method, path, host=self.host, **kwargs)

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/stats/", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, timeout, what=f"the script's broker on {self.host}:{self.port}")

    def cmdline(self) -> list[str]:
        raw = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes()
        return [part.decode() for part in raw.split(b"\0") if part]


@pytest.fixture
def script_broker(tmp_path_factory):
    """Start brokers with the start script; all are stopped after the test."""
    started: list[ScriptBroker] = []

    def start(env: dict[str, str], *args: str, workdir: Path | None = None, host="127.0.0.1"):
        # Empty means unset to the script: no stray RESTMQ_* of this shell can leak in.
        env = {name: "" for name in [*VARIABLES, "RESTMQ_LOGFILE"]} | env
        env["RESTMQ_PORT"] = env["RESTMQ_PORT"] or str(free_port())
        workdir = workdir or tmp_path_factory.mktemp("script")
        broker = ScriptBroker(workdir, list(args), port=int(env["RESTMQ_PORT"]), env=env, host=host)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


def short_tmpdir() -> Path:
    """A directory with a short path: unix socket paths are limited to ~104 bytes."""
    return Path(tempfile.mkdtemp(prefix="rmq-", dir="/tmp"))


def dbsize(address, db: int = 0, password: str | None = None) -> int:
    """Number of keys in database ``db`` of a server (TCP ``(host, port)`` or a socket path)."""
    return redis_command(address, "DBSIZE", password=password, db=db)


# -- start_scripts/restmq_server ------------------------------------------------------


def test_script_runs_the_broker_with_settings_from_the_environment(script_broker, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    data_dir = tmp_path / "queues"
    acl = tmp_path / "my-acl.conf"
    acl.write_text("# everything open\n")
    broker = script_broker(
        {
            "RESTMQ_LISTEN": "127.0.0.2",  # all of 127/8 is loopback on Linux
            "RESTMQ_DATA_DIR": str(data_dir),
            "RESTMQ_ACL": str(acl),
        },
        workdir=cwd,
        host="127.0.0.2",
    )
    assert broker.get("/stats/").status == 200
    assert broker.post("/q/scripted", value="hello").status == 200
    assert broker.get("/q/scripted").json()["value"] == "hello"

    # port and interface: it answers on 127.0.0.2:<RESTMQ_PORT> and not on 127.0.0.1
    with pytest.raises(ConnectionRefusedError):
        request(broker.port, "GET", "/stats/", host="127.0.0.1", timeout=5)
    log = broker.log()
    assert f"listening on http://127.0.0.2:{broker.port}/" in log
    # data dir: the embedded Valkey lives in RESTMQ_DATA_DIR, not in the working directory
    assert f"storage: embedded Valkey, data dir {data_dir}" in log
    assert (data_dir / "valkey.sock").exists()
    assert len(valkey_pids(data_dir)) == 1
    assert not (cwd / "restmq-data").exists()
    # the script execs twistd (same pid), handing it the acl file, and writes no twistd.pid
    argv = broker.cmdline()
    assert any(Path(part).name == "twistd" for part in argv[:2]), argv
    assert f"--acl={acl}" in argv
    assert argv.index("--nodaemon") < argv.index("restmq")
    assert not (cwd / "twistd.pid").exists()

    # SIGTERM to the script's process stops the broker and its Valkey
    server_pids = valkey_pids(data_dir)
    assert broker.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert not any(pid_alive(pid) for pid in server_pids)
    assert not valkey_pids(data_dir)
    assert "RestMQ stopped" in broker.log()


def test_two_script_brokers_share_a_working_directory(script_broker, tmp_path):
    cwd = tmp_path / "shared-cwd"
    cwd.mkdir()
    pidfile = cwd / "first.pid"
    first = script_broker(
        {"RESTMQ_DATA_DIR": str(tmp_path / "one"), "RESTMQ_PIDFILE": str(pidfile)}, workdir=cwd
    )
    second = script_broker({"RESTMQ_DATA_DIR": str(tmp_path / "two")}, workdir=cwd)
    assert first.post("/q/a", value="1").status == 200
    assert second.post("/q/b", value="2").status == 200
    assert pidfile.read_text().strip() == str(first.proc.pid)
    assert not (cwd / "twistd.pid").exists()
    first.stop()
    assert not pidfile.exists(), "twistd removes its pid file on a clean stop"
    assert second.get("/q/b").json()["value"] == "2"


def test_script_extra_arguments_and_external_redis(script_broker, valkey_factory, tmp_path):
    server = valkey_factory(password="pa55")
    broker = script_broker(
        {
            "RESTMQ_REDIS_HOST": "127.0.0.1",
            "RESTMQ_REDIS_PORT": str(server.port),
            "RESTMQ_REDIS_PASSWORD": "pa55",
            "RESTMQ_DATA_DIR": str(tmp_path / "unused"),
        },
        "--redis-db",
        "4",
    )
    assert broker.post("/q/remote", value="x").status == 200
    assert f"storage: external Redis at 127.0.0.1:{server.port}" in broker.log()
    # the message went to the named server, in the database given as an extra argument
    assert dbsize(("127.0.0.1", server.port), db=4, password="pa55") > 0
    assert dbsize(("127.0.0.1", server.port), db=0, password="pa55") == 0
    assert not (tmp_path / "unused").exists()
    assert not valkey_pids(tmp_path / "unused")


def test_script_uses_a_redis_unix_socket(script_broker):
    workdir = short_tmpdir()
    sock = workdir / "redis.sock"
    argv = [
        valkey_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(workdir),
        "--save", "", "--appendonly", "no", "--logfile", str(workdir / "valkey.log"),
    ]  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, 10, what="the valkey socket")
        broker = script_broker({"RESTMQ_REDIS_SOCKET": str(sock)}, workdir=workdir)
        assert broker.post("/q/local", value="x").status == 200
        assert f"storage: external Redis at unix:{sock}" in broker.log()
        assert dbsize(sock) > 0
        broker.stop()
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_script_runs_workers(script_broker):
    broker = script_broker({"RESTMQ_WORKERS": "2"})
    assert "--workers=2" in broker.cmdline()
    answering: set[int] = set()

    def both_answer() -> bool:
        answering.update(broker.get("/health").json()["pid"] for _ in range(10))
        return len(answering) == 2

    wait_for(both_answer, 30, what="two processes answering")


def test_script_help_lists_every_variable():
    result = subprocess.run(
        [str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    for variable in [*VARIABLES, "RESTMQ_LOGFILE"]:
        assert variable in result.stdout, variable
    # and the twistd restmq options that can follow as extra arguments
    for option in ("--redis-db", "--redis-pool", "--max-body"):
        assert option in result.stdout, option
    assert "systemd" in result.stdout


def test_script_without_twistd_says_what_to_do(tmp_path):
    # a copy of the script outside any checkout, with no twistd on PATH
    copy = tmp_path / "start_scripts" / "restmq_server"
    copy.parent.mkdir()
    shutil.copy2(SCRIPT, copy)
    result = subprocess.run(
        [str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "twistd not found" in result.stderr
    assert "make install" in result.stderr


# -- contrib/systemd/restmq.service ---------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: [Section] headers, Key=Value lines (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not raw.endswith("\\"), f"line {number}: keep directives on one line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number} comes before any [Section]"
        key, sep, value = line.partition("=")
        assert sep and key.strip() and " " not in key.strip(), f"line {number}: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_twistd_in_the_foreground_with_restart_and_hardening():
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "twistd"
    assert argv.index("--nodaemon") < argv.index("restmq")
    assert "--logfile=-" in argv[: argv.index("restmq")], "log to stdout, i.e. the journal"
    assert "--pidfile=" in argv[: argv.index("restmq")]
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root")
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"].rstrip("s")) >= 15  # Valkey gets 10 s to flush
    # the data dir is the unit's state directory, writable despite ProtectSystem=strict
    state_dir = f"/var/lib/{service['StateDirectory']}"
    data_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("--data-dir="))
    assert data_dir == state_dir == service["WorkingDirectory"]
    assert state_dir in service["ReadWritePaths"].split()
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_passes_systemd_analyze_verify_where_available(tmp_path):
    """systemd's own parser finds nothing to complain about (when this machine has it)."""
    analyze = shutil.which("systemd-analyze")
    copy = unit_for_this_checkout(tmp_path)
    # The structural checks run everywhere; systemd's parser only where it is installed.
    assert parse_unit(copy.read_text())["Service"]["ExecStart"][-1].startswith(TWISTD)
    if analyze is not None:
        result = subprocess.run(
            [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
        )
        complaints = [line for line in result.stderr.splitlines() if copy.name in line]
        assert result.returncode == 0 and not complaints, result.stderr


def unit_for_this_checkout(tmp_path: Path) -> Path:
    """The unit, with ExecStart's twistd pointing at this checkout's."""
    text = UNIT.read_text()
    service = parse_unit(text)["Service"]
    twistd = shlex.split(service["ExecStart"][-1])[0]
    copy = tmp_path / "restmq.service"
    copy.write_text(text.replace(twistd, TWISTD))
    return copy


def test_systemd_unit_exec_start_serves_and_logs_to_stdout(tmp_path):
    """Run the unit's own ExecStart line, with the paths moved into tmp_path."""
    unit = parse_unit(UNIT.read_text())["Service"]
    argv = shlex.split(unit["ExecStart"][-1])
    port = free_port()
    data_dir = short_tmpdir()
    acl = tmp_path / "acl.conf"
    acl.write_text("# everything open\n")
    replaced = {"--port": str(port), "--data-dir": str(data_dir), "--acl": str(acl)}
    command = [TWISTD]
    for arg in argv[1:]:
        option = arg.split("=", 1)[0]
        command.append(f"{option}={replaced[option]}" if option in replaced else arg)
    assert f"--port={port}" in command and f"--data-dir={data_dir}" in command

    log = tmp_path / "journal.log"
    with open(log, "wb") as stdout:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=stdout, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, 20, what="the unit's broker")
        assert proc.poll() is None, log.read_text()
        assert f"listening on http://127.0.0.1:{port}/" in log.read_text()
        server_pids = valkey_pids(data_dir)
        assert server_pids
        proc.send_signal(signal.SIGTERM)
        # a death by the unit's KillSignal counts as a clean stop for systemd
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert not any(pid_alive(pid) for pid in server_pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/stats/", timeout=2).status == 200
    except OSError:
        return False
