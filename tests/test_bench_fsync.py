"""`python -m bench --only fsync` runs and reports add req/s and p99 latency for each
--fsync policy, with ratios against everysec. A functional test of the benchmark: no
speed is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

ROW = re.compile(r"^\s+(always|everysec|no)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")


def test_the_fsync_scenario_compares_each_policy_with_everysec_and_cleans_up():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "fsync", "--duration", "1.5",
         "--warmup", "0.2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    rows = {m[1]: m for m in map(ROW.match, out.splitlines()) if m}
    assert set(rows) == {"always", "everysec", "no"}, out
    assert all(int(row[2].replace(",", "")) > 0 for row in rows.values()), out
    assert rows["everysec"][3] == "1.00" and rows["everysec"][6] == "1.00", out
    assert re.search(
        r"against everysec: always req/s [\d.]+x, p99 [\d.]+x; no req/s [\d.]+x, p99 [\d.]+x", out
    ), out
    assert re.search(r"disk: data dirs on \S+ \(.*\); a \d+-byte append \+ fsync there", out), out
    workdir = re.search(r"work dir (\S+)", out)[1]
    assert not Path(workdir).exists()
    leftovers = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True)
    assert leftovers.stdout == "", "processes of the benchmark are still running"
