"""The ``restmq`` command stands apart from the broker: it loads none of its modules, and
its copies of the protocol's limits are the broker's."""

from __future__ import annotations

import json
import subprocess
import sys

from restmq.cli import limits
from restmq.operations import validation


def test_the_commands_limits_are_the_brokers():
    assert (limits.MAX_BATCH, limits.MAX_LEASE, limits.MAX_WAIT) == (
        validation.MAX_BATCH,
        validation.MAX_LEASE,
        validation.MAX_WAIT,
    )


def test_the_command_loads_no_broker_module():
    # A fresh interpreter: this one has loaded the broker already.
    code = "import json, sys, restmq.cli.main; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = [name for name in json.loads(run.stdout) if name.split(".")[0] == "restmq"]
    assert "restmq.cli.main" in loaded
    own = {"restmq", "restmq.cli"}
    broker = [name for name in loaded if name not in own and not name.startswith("restmq.cli.")]
    assert broker == []
