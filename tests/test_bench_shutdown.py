"""`python -m bench --only shutdown` counts what a stop loses, and cleans up after itself.

A functional test of the benchmark scenario (one trial per signal), not a timed one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

ROW = re.compile(r"^\s+(SIGTERM|SIGKILL)\s+1\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s")


def test_shutdown_scenario_reports_acknowledged_and_lost_per_signal():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "shutdown", "--stop-trials", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    rows = {m[1]: m for m in map(ROW.match, out.splitlines()) if m}
    assert set(rows) == {"SIGTERM", "SIGKILL"}, out
    for row in rows.values():
        assert int(row[2].replace(",", "")) > 0, out  # the producers were acknowledged
    assert int(rows["SIGTERM"][5].replace(",", "")) == 0, "a graceful stop loses nothing"
    summary = out.split("=== summary", 1)[1]
    assert re.search(r"SIGTERM: 0 acknowledged messages lost .*\sPASS$", summary, re.M), summary
    workdir = re.search(r"work dir (\S+)", out)[1]
    assert not Path(workdir).exists()
