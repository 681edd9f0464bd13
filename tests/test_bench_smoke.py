"""`python -m bench` works as a tool: it runs, prints its tables and ratios, cleans up.

A functional test of the benchmark, not a timed one: no assertion on any speed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

ROW = re.compile(
    r"^\s+(stock cyclone|bare cyclone|broker)\s+(POST|GET)\s+/q/<q>(\s\S+ values|\?n=\d+)?"
    r"\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)"
)


def run_bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_help_explains_the_options():
    result = run_bench("--help", timeout=30)
    assert result.returncode == 0, result.stderr
    for option in (
        "--only", "--duration", "--connections", "--client-procs", "--rate", "--cluster-queues",
        "--semantics-rounds", "--delay-samples",
    ):  # fmt: skip
        assert option in result.stdout
    for scenario in ("rest", "latency", "fanout", "memory", "workers", "cluster", "semantics"):
        assert re.search(rf"^\s+{scenario}\s", result.stdout, re.MULTILINE), scenario


def test_unknown_scenario_is_refused():
    result = run_bench("--only", "nonsense", timeout=30)
    assert result.returncode == 2
    assert "unknown scenario 'nonsense'" in result.stderr


def test_rest_scenario_prints_figures_ratios_and_round_trips_and_cleans_up():
    result = run_bench(
        "--only", "rest", "--duration", "1", "--warmup", "0.2",
        "--connections", "2", "--round-trip-sample", "20",
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr

    rows = {(m[1], m[2], m[3] or ""): m for m in map(ROW.match, out.splitlines()) if m}
    assert set(rows) == {
        ("stock cyclone", "POST", ""),
        ("stock cyclone", "GET", ""),
        ("bare cyclone", "POST", ""),
        ("bare cyclone", "GET", ""),
        ("broker", "POST", ""),
        ("broker", "GET", ""),
        ("broker", "POST", " 100 values"),
        ("broker", "GET", "?n=100"),
    }, out
    for row in rows.values():
        assert int(row[4].replace(",", "")) > 0, row[0]  # each run got answers
    # a batch row counts its messages: 100 per answer
    batch = rows[("broker", "GET", "?n=100")]
    requests, messages = (int(batch[i].replace(",", "")) for i in (4, 5))
    assert abs(messages - 100 * requests) <= 100, batch[0]

    for label in (
        r"bare cyclone \(our connection class\) / stock cyclone",
        r"broker / stock cyclone",
        r"broker / bare cyclone",
    ):
        ratio = re.search(rf"ratio {label}:\s+produce ([\d.]+)x\s+pop ([\d.]+)x", out)
        assert ratio, out
        assert float(ratio[1]) > 0 and float(ratio[2]) > 0
    batches = re.search(r"batches of 100, msg/s .*:\s+produce ([\d.]+)x\s+pop ([\d.]+)x", out)
    assert batches, out
    assert float(batches[1]) > 0 and float(batches[2]) > 0

    # pops were given a pre-filled queue; none may find it empty
    assert re.search(r"pops that found the queue empty \(204\): 0 of [\d,]+", out), out
    for method in ("POST", "GET "):
        assert re.search(rf"^\s+{method} [\d.]+ per request\s+\(sent: ", out, re.MULTILINE), out
        assert re.search(rf"^\s+{method} [\d.]+ executed per request", out, re.MULTILINE), out

    # the summary names the performance targets with a verdict each
    summary = out.split("=== summary", 1)[1]
    verdicts = re.findall(r"^\s+rest\s+.+\s(PASS|MISSED)$", summary, re.MULTILINE)
    assert len(verdicts) == 8, summary

    # every process it started is gone (servers, embedded Valkey), and its work dir too
    workdir = re.search(r"work dir (\S+)", out)[1]
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []
    started = re.findall(r"(?:handler on port|broker on port) \d+ \((?:twistd )?pid (\d+)", out)
    assert len(started) == 3, out
    for pid in map(int, started):
        assert not still_running(pid, (workdir.encode(), b"bench.baseline"))


def test_workers_scenario_compares_one_process_with_two_and_cleans_up():
    result = run_bench(
        "--only", "workers", "--workers", "2", "--duration", "1", "--warmup", "0.2",
        "--connections", "4", timeout=150,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    rows = re.findall(r"^\s+--workers ([12])\s+(POST|GET)\s+/q/<q>\s+([\d,]+)\s", out, re.M)
    assert {(n, method) for n, method, _ in rows} == {
        ("1", "POST"), ("1", "GET"), ("2", "POST"), ("2", "GET"),
    }, out  # fmt: skip
    assert all(int(rate.replace(",", "")) > 0 for _, _, rate in rows), out
    assert "worker 1 " in out, "the CPU use of the worker process is shown"
    assert re.search(r"speed-up with --workers 2: produce [\d.]+x\s+pop [\d.]+x", out), out
    assert re.search(r"machine: \d+ cores", out), "the core count is reported"
    workdir = re.search(r"work dir (\S+)", out)[1]
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []


def test_cluster_scenario_compares_with_standalone_spreads_over_shards_fails_over_and_cleans_up():
    result = run_bench(
        "--only", "cluster", "--duration", "1", "--warmup", "0.2", "--connections", "4",
        "--cluster-queues", "12", timeout=240,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr

    # 1. the same load on a standalone valkey-server and on the cluster
    rows = re.findall(r"^\s+(standalone|cluster)\s+(POST|GET)\s+/q/<q>\s+([\d,]+)\s", out, re.M)
    assert {(store, method) for store, method, _ in rows} == {
        ("standalone", "POST"), ("standalone", "GET"), ("cluster", "POST"), ("cluster", "GET"),
    }, out  # fmt: skip
    assert all(int(rate.replace(",", "")) > 0 for _, _, rate in rows), out
    assert re.search(r"ratio cluster / standalone:\s+produce [\d.]+x\s+pop [\d.]+x", out), out
    # the pops were spread over pre-filled queues; none found its queue empty
    assert "pops that found a queue empty (204): standalone 0, cluster 0" in out, out
    assert re.search(r"cluster POST store CPU%: primary \d+/\d+/\d+, replica \d+/\d+/\d+", out)

    # 2. one row per primary; together they hold every queue
    shards = re.findall(r"^\s+primary (\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[+-]\d+%$", out, re.M)
    assert len(shards) == 3, out
    assert sum(int(queues) for _, queues in shards) == 12, out
    assert re.search(r"messages moved: [\d,]+ \([\d,]+ adds \+ [\d,]+ pops", out), out
    assert "total throughput cannot grow with the shards here" in out

    # 3. a primary was killed, and the time until its queue took writes again is shown
    killed = re.search(r"killed \(SIGKILL\)\s+primary (\d+), holding (\S+)", out)
    assert killed and killed[1] in {port for port, _ in shards}, out
    resumed = re.search(rf"first POST /q/{killed[2]} answered 200\s+(none|[\d.]+ s after)", out)
    assert resumed, out
    assert re.search(r"\(another shard\) 200 throughout\s+(yes|no) \(", out), out

    summary = out.split("=== summary", 1)[1]
    verdicts = re.findall(r"^\s+cluster\s+.+\s(PASS|MISSED)$", summary, re.MULTILINE)
    assert len(verdicts) == 4, summary

    # every process it started is gone (brokers, standalone and cluster nodes), and its
    # work dir too
    workdir = re.search(r"work dir (\S+)", out)[1]
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []
    pids = re.findall(r"\(pid (\d+)\)", out) + re.findall(r"valkey-server pid (\d+)", out)
    assert len(pids) == 7, out
    for pid in map(int, pids):
        assert not still_running(pid, (b"valkey-server",)), pid


def test_semantics_scenario_compares_each_kind_of_add_with_plain_times_delays_and_cleans_up():
    result = run_bench(
        "--only", "semantics", "--duration", "1", "--warmup", "0.2", "--connections", "2",
        "--semantics-rounds", "2", "--delay-samples", "30",
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr

    # 1-3. one row per kind of add, each with answers, in rounds taken together
    rows = re.findall(
        r"^\s+(plain add|Idempotency-Key|delayed add|fan-out to 3 subs)\s.*?\s([\d,]+)\s+"
        r"([\d.]+)\s+([\d,]+)\s+([\d.]+)\s",
        out,
        re.MULTILINE,
    )
    kinds = {kind: (rate, stored) for kind, rate, _, stored, _ in rows}
    assert set(kinds) == {"plain add", "Idempotency-Key", "delayed add", "fan-out to 3 subs"}, out
    for kind, (rate, _stored) in kinds.items():
        assert int(rate.replace(",", "")) > 0, kind
    # a fanned-out add stores one message per subscription
    rate, stored = (int(x.replace(",", "")) for x in kinds["fan-out to 3 subs"])
    assert abs(stored - 3 * rate) <= 3, out
    assert len(re.findall(r"req/s by round [\d,]+ / [\d,]+$", out, re.MULTILINE)) == 4, out
    assert re.search(
        r"ratio to plain add, req/s:\s+Idempotency-Key [\d.]+x\s+delay=60 [\d.]+x", out
    )
    assert re.search(
        r"fan-out to 3 subscriptions, messages stored/s over plain add's: [\d.]+x", out
    )

    # what the queues hold: every idempotent add stored (a fresh key each: no replay),
    # delayed adds all still delayed, fanned-out adds in each subscription queue only
    counts = {
        kind: re.search(r"^\s+" + kind + r"\s+([\d,]+) -> (.*)$", out, re.M).groups()
        for kind in ("plain", "idempotent", "delayed", "fanout")
    }
    for kind in ("plain", "idempotent"):
        answered, held = counts[kind]
        assert held.endswith(f": {answered.replace(',', '')} waiting"), (kind, held)
    answered, held = counts["delayed"]
    assert held.endswith(f": 0 waiting, {answered.replace(',', '')} delayed"), held
    answered, held = counts["fanout"]
    answered = answered.replace(",", "")
    assert ": 0 waiting; " in held, held
    for name in ("billing", "audit", "archive"):
        assert f":{name}: {answered}" in held, held

    # 4. every delayed message reached the SSE consumer; its lateness is printed
    precision = re.search(
        r"^\s+SSE GET /c/<q>\s+(\d+)\s+(\d+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s", out, re.M
    )
    assert precision, out
    assert precision[1] == precision[2] == "30", out

    summary = out.split("=== summary", 1)[1]
    verdicts = re.findall(r"^\s+semantics\s+.+\s(PASS|MISSED)$", summary, re.MULTILINE)
    assert len(verdicts) == 3, summary

    workdir = re.search(r"work dir (\S+)", out)[1]
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []
    pids = re.findall(r"\(pid (\d+)\)", out)
    assert len(pids) == 2, out  # the broker and its valkey-server
    for pid in map(int, pids):
        assert not still_running(pid, (workdir.encode(), b"valkey-server")), pid


def still_running(pid: int, marks: tuple[bytes, ...]) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and any(mark in cmdline for mark in marks)
