"""The ``restmq`` command and the Python client (restmq.client) stand apart from the broker:
they load none of its modules (nor does the client load the command's), and their copies
of the protocol's limits are the broker's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from restmq.cli import limits
from restmq.client import limits as client_limits
from restmq.operations import validation


def test_the_commands_limits_are_the_brokers():
    assert (limits.MAX_BATCH, limits.MAX_LEASE, limits.MAX_WAIT, limits.MAX_DELAY) == (
        validation.MAX_BATCH,
        validation.MAX_LEASE,
        validation.MAX_WAIT,
        validation.MAX_DELAY,
    )


def test_the_python_clients_limits_are_the_brokers():
    assert (
        client_limits.MAX_BATCH,
        client_limits.MAX_LEASE,
        client_limits.MAX_WAIT,
        client_limits.MAX_PREFETCH,
    ) == (validation.MAX_BATCH, validation.MAX_LEASE, validation.MAX_WAIT, validation.MAX_PREFETCH)


def loaded_by(module: str) -> list[str]:
    """The restmq modules a fresh interpreter (this one has loaded the broker) loads for
    ``import module``."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [name for name in json.loads(run.stdout) if name.split(".")[0] == "restmq"]


@pytest.mark.parametrize(
    ("module", "packages"),
    [
        # the command is built on the Python client, which is no broker module either
        ("restmq.cli.main", ("restmq.cli", "restmq.client")),
        ("restmq.client", ("restmq.client",)),
    ],
)
def test_a_client_loads_no_broker_module(module, packages):
    loaded = loaded_by(module)
    assert module in loaded
    foreign = [
        name
        for name in loaded
        if name != "restmq"
        and not any(name == package or name.startswith(package + ".") for package in packages)
    ]
    assert foreign == []
