"""`python -m bench --only leases` runs and prints its figures (no assertion on speed)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import ROOT


def test_leases_scenario_prints_consumption_rates_and_wake_up_latencies():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "leases", "--duration", "1", "--warmup", "0.2",
         "--lease-consumers", "4", "--lease-rounds", "2", "--wake-up-samples", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for row in ("plain pop", "leased + ack", "n=10 + 1 ack", "long poll", "SSE"):
        assert re.search(rf"^\s+{re.escape(row)}\s.*\d", out, re.MULTILINE), (row, out)
    for kind in ("plain pop", "leased + ack", "n=10 + 1 ack"):  # each round's figure, then the best
        assert re.search(rf"{re.escape(kind)} .*: msg/s by round [\d,]+ / [\d,]+$", out, re.M), out
    assert "steady msg/s" in out and "mean msg/s" in out, out
    assert re.search(r"long-poll wake-up p50 .*(PASS|MISSED)", out), out
    assert "errors" in out and not re.search(r"ERROR", out), out
