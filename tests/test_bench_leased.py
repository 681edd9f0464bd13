"""`python -m bench --only leased` runs and reports acked messages per second for leased
WebSocket and SSE consumers. A functional test of the benchmark: no speed is asserted."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import ROOT

ROW = re.compile(r"^\s+(WebSocket \(ack frames\)|SSE \(ack over HTTP\))\s+2\s+3\s+([\d,]+)\s")


def test_the_leased_scenario_reports_acked_messages_per_second_for_both_transports():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "leased", "--duration", "1",
         "--warmup", "0.2", "--leased-consumers", "2", "--prefetch", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    rows = {m[1]: int(m[2].replace(",", "")) for m in map(ROW.match, out.splitlines()) if m}
    assert set(rows) == {"WebSocket (ack frames)", "SSE (ack over HTTP)"}, out
    assert all(acked > 0 for acked in rows.values()), out
