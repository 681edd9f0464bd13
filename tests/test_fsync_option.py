"""``--fsync always|everysec|no``: when the embedded Valkey syncs its append-only file.

What a user checks: the policy asked for is the one the embedded Valkey runs with
(``CONFIG GET appendfsync`` on its socket), also after Valkey restarts and with
--workers; a bad value and an external store are refused with a message saying why.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from restmq.runtime.options import Options
from tests.support import TWISTD, option_refusal, parse_options, valkey_pids, wait_for

EXTERNAL_STORES = [
    ("--redis-host", "127.0.0.1"),
    ("--redis-port", "6380"),
    ("--redis-socket", "/tmp/redis.sock"),
    ("--redis-sentinel", "127.0.0.1:26379", "--redis-service", "jobs"),
    ("--redis-cluster", "127.0.0.1:7000"),
]


def appendfsync(broker) -> str:
    """The policy the broker's embedded Valkey runs with, asked of Valkey itself."""
    name, value = broker.redis("CONFIG", "GET", "appendfsync")
    assert name == "appendfsync"
    return value


# -- the option, parsed in-process --------------------------------------------------------


def test_the_default_is_everysec():
    assert parse_options()["fsync"] == "everysec"


@pytest.mark.parametrize("given", ["always", "everysec", "no", "ALWAYS", " No "])
def test_each_policy_is_accepted(given):
    assert parse_options("--fsync", given)["fsync"] == given.strip().lower()


@pytest.mark.parametrize("given", ["sometimes", "", "yes", "1"])
def test_a_bad_value_is_refused_naming_the_choices(given):
    assert (
        option_refusal("--fsync", given) == f"--fsync takes always, everysec or no, not {given!r}"
    )


@pytest.mark.parametrize("store", EXTERNAL_STORES, ids=lambda args: args[0])
def test_an_external_store_is_refused_naming_it(store):
    message = option_refusal("--fsync", "always", *store)
    assert message.startswith("--fsync applies to the embedded Valkey only"), message
    assert f"named by {store[0]} keeps its own appendfsync" in message
    assert "that server's configuration" in message


@pytest.mark.parametrize("store", EXTERNAL_STORES, ids=lambda args: args[0])
def test_an_external_store_without_fsync_is_left_as_it_is(store):
    assert parse_options(*store)["fsync"] is None


def test_a_worker_of_an_embedded_broker_takes_the_option_and_leaves_it_to_the_broker():
    # A worker gets the broker's own arguments plus the embedded Valkey's socket.
    socket = os.path.abspath("restmq-data/valkey.sock")
    options = parse_options("--fsync", "always", "--worker-fd", "3", "--redis-socket", socket)
    assert options.is_worker
    assert options["fsync"] is None  # the main process's Valkey has it already


def test_the_help_explains_the_trade_off():
    text = " ".join(Options().getUsage().split())
    start = text.index("--fsync=")
    entry = text[start : text.index("--", start + len("--fsync="))]
    for words in ("'always'", "'everysec'", "'no'", "power loss", "[default: everysec]",
                  "external store"):  # fmt: skip
        assert words in entry, words


# -- twistd restmq ------------------------------------------------------------------------


def run_twistd(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWISTD, "restmq", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_twistd_refuses_a_bad_value_and_an_external_store_at_once(tmp_path):
    for args, error in [
        (("--fsync", "sometimes"), "--fsync takes always, everysec or no, not 'sometimes'"),
        (
            ("--fsync=no", "--redis-host", "127.0.0.1"),
            "--fsync applies to the embedded Valkey only; the external store named by "
            "--redis-host keeps its own appendfsync: set it in that server's configuration",
        ),
    ]:
        result = run_twistd(*args, cwd=tmp_path)
        assert result.returncode == 1, args
        assert result.stderr.splitlines() == [
            f"twistd restmq: {error}",
            "Run 'twistd restmq --help' for the options.",
        ]
        assert not (tmp_path / "restmq-data").exists(), "a refused broker touched its data dir"


@pytest.mark.parametrize(
    ("args", "policy"),
    [((), "everysec"), (("--fsync", "always"), "always"), (("--fsync=no",), "no")],
    ids=["default", "always", "no"],
)
def test_the_embedded_valkey_runs_with_the_policy_asked_for(broker_factory, args, policy):
    broker = broker_factory(*args)
    assert appendfsync(broker) == policy
    assert broker.post("/q/durable", value="kept").text == "durable:1\r\n"
    assert f"data dir {broker.data_dir}, appendfsync {policy}" in broker.log()


def test_a_restarted_embedded_valkey_keeps_the_policy(broker_factory):
    broker = broker_factory("--fsync", "always")
    [pid] = valkey_pids(broker.data_dir)
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        pids = valkey_pids(broker.data_dir)
        return bool(pids) and pids != [pid] and broker.get("/stats/").status == 200

    wait_for(restarted, timeout=15, what="the embedded Valkey to be restarted")
    assert appendfsync(broker) == "always"


def test_workers_share_the_main_process_valkey_and_its_policy(broker_factory):
    broker = broker_factory("--fsync", "always", "--workers", "2")
    # The worker is started with the broker's own arguments, --fsync among them: it
    # either serves, or says in the broker's log what it refused.
    wait_for(
        lambda: "serving the broker's port" in broker.log() or "--fsync" in broker.log(),
        timeout=30,
        what="the worker to serve",
    )
    log = broker.log()
    assert "--fsync" not in log, log
    assert len(valkey_pids(broker.data_dir)) == 1
    assert appendfsync(broker) == "always"
