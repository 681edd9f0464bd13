"""`python -m bench.soak` works as a tool: a short soak runs, prints its rows and its
verdicts, loses no acknowledged message, and cleans up.

A functional test of the soak, not a timed one: the growth verdicts of a few seconds
say nothing, so only their presence is checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

ROW = re.compile(
    r"^\s+(\d+:\d\d)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+) MB\s+(\d+)-(\d+)\s+([\d.]+) MB$",
    re.MULTILINE,
)


def run_soak(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.soak", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def number(text: str) -> int:
    return int(text.replace(",", ""))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_help_explains_the_load_and_the_options():
    result = run_soak("--help", timeout=30)
    assert result.returncode == 0, result.stderr
    for option in ("--minutes", "--interval", "--rate", "--lease", "--churn"):
        assert option in result.stdout
    for route in ("GET /q/<q>?wait=5", "DELETE /q/<q>?receipt=R", "GET /c/<q>", "/ws/<q>"):
        assert route in result.stdout


def test_a_short_soak_prints_its_rows_and_verdicts_loses_nothing_and_cleans_up():
    result = run_soak("--minutes", "0.25", "--interval", "5", "--rate", "200")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr

    # one row per 5 s: messages went in and out, and every figure was read
    rows = ROW.findall(out)
    assert [row[0] for row in rows] == ["0:05", "0:10", "0:15"], out
    for _, messages_in, messages_out, _, rss, fds_low, fds_high, memory in rows:
        assert number(messages_in) > 0 and number(messages_out) > 0, out
        assert float(rss) > 0 and float(memory) > 0, out
        assert 0 < int(fds_low) <= int(fds_high), out

    # (a) every message answered 200 was consumed or drained; every kind of consumer took some
    answered = re.search(r"messages answered 200: ([\d,]+); consumed: ([\d,]+); left", out)
    assert answered and number(answered[1]) > 0, out
    assert re.search(r"^\s+lost: 0; duplicates: [\d,]+; leased redeliveries", out, re.M), out
    by_kind = re.search(r"^\s+consumed by: (.+)$", out, re.M)[1].split(", ")
    consumed = {kind: number(n) for kind, n in (part.rsplit(" ", 1) for part in by_kind)}
    for kind in ("SSE", "WebSocket", "leased WebSocket", "leased take + ack", "long poll"):
        assert consumed.get(kind, 0) > 0, (kind, out)
    assert re.search(r"^\s+no acknowledged message lost\s+-\s+0 lost\s+-\s+PASS$", out, re.M)

    # (b) each figure's growth since the end of row 2, judged
    for label in (
        r"broker RSS",
        r"broker open fds \(lowest of a row\)",
        r"valkey used_memory, drained \(depth 0\)",
    ):
        assert re.search(rf"^\s+{label}\s+\S+.*\s[+-][\d.]+%\s+(PASS|FAIL)$", out, re.M), label
    assert re.search(r"^\s+soak: (PASS|FAIL)$", out, re.M), out

    # the broker and its valkey-server are gone, and so is the work dir
    workdir = re.search(r"work dir (\S+)", out)[1]
    assert not Path(workdir).exists()
    pids = re.search(r"\(pid (\d+), port \d+\) \+ embedded valkey-server \(pid (\d+)\)", out)
    assert pids, out
    assert not any(alive(int(pid)) for pid in pids.groups())
