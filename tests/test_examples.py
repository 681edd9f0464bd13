"""The scripts in examples/ run against a live broker, as a user would run them."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import ROOT, broker_url, client_env, free_port, wait_for

EXAMPLES = ROOT / "examples"


def run_example(url: str, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=client_env(url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_left_empty(broker, queue: str) -> None:
    """What the examples' docstrings promise: the queue they used is purged, and stays
    listed (empty) in /stats/, since the protocol has no way to remove a queue."""
    listed = broker.get("/stats/").json()["queues"]
    assert queue in listed
    assert (listed[queue]["len"], listed[queue]["leased"]) == (0, 0)
    # the example's consumers have left (the broker notices a closed connection at once,
    # or nearly: give it a moment on a busy machine)
    wait_for(lambda: broker.get(f"/stats/{queue}").json()["consumers"] == 0, 10)


def test_the_comet_demo_prints_what_it_posted(shared_broker):
    result = run_example(broker_url(shared_broker), "test_comet.py")
    assert result.returncode == 0, result.stderr
    queue = re.search(r"consuming (\S+) at", result.stdout).group(1)
    for value in ("hello", "from the producer", "goodbye"):
        assert f": {value}\n" in result.stdout
    # the producer waited for the stream to open: the messages came live, not as a backlog
    assert result.stdout.index("consuming ") < result.stdout.index("posted ")
    assert_left_empty(shared_broker, queue)


def test_the_comet_consumer_prints_a_queue_and_stops_after_count(shared_broker, queue):
    for value in ("first", "second"):
        shared_broker.post(f"/q/{queue}", value=value)
    result = run_example(broker_url(shared_broker), "test_comet.py", queue, "--count", "2")
    assert result.returncode == 0, result.stderr
    assert f"{queue}:1: first\n{queue}:2: second\n" in result.stdout


def test_the_curl_demo_parses_what_curl_receives(shared_broker):
    result = run_example(broker_url(shared_broker), "test_comet_curl.py")
    assert result.returncode == 0, result.stderr
    queue = re.search(r"curl -N \S+/c/(\S+)", result.stdout).group(1)
    assert f"{queue}:1: one\n{queue}:2: two\n{queue}:3: three\n" in result.stdout
    assert_left_empty(shared_broker, queue)


def test_the_curl_consumer_prints_a_queue(shared_broker, queue):
    shared_broker.post(f"/q/{queue}", value="via curl")
    result = run_example(broker_url(shared_broker), "test_comet_curl.py", queue, "--count", "1")
    assert result.returncode == 0, result.stderr
    assert f"{queue}:1: via curl\n" in result.stdout


def test_map_reduce_counts_words_with_roundrobin_mappers(shared_broker):
    result = run_example(
        broker_url(shared_broker), "map_reduce.py", "--mappers", "3", "--chunks", "9"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same as a direct count" in result.stdout
    # roundrobin: every chunk to exactly one mapper, and every mapper took its turn
    taken = re.findall(r"mapper-(\d) counted chunks \[([\d, ]+)\]", result.stdout)
    assert sorted(name for name, _ in taken) == ["1", "2", "3"]
    chunks = sorted(int(c) for _, listed in taken for c in listed.split(", "))
    assert chunks == list(range(9))
    assert re.search(r"^\s+\d+\s+the$", result.stdout, re.MULTILINE)  # the top words
    run = re.search(r"posted to (wordcount-\S+):map", result.stdout).group(1)
    for queue in (f"{run}:map", f"{run}:reduce"):
        assert_left_empty(shared_broker, queue)


def test_map_reduce_without_a_broker_says_so_and_exits_2():
    result = run_example(f"http://127.0.0.1:{free_port()}", "map_reduce.py")
    assert result.returncode == 2
    assert "cannot use the broker" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_xmlrpc_example_reads_restmq_url_and_purges_its_queue(shared_broker, queue):
    shared_broker.post(f"/q/{queue}", value="left over from before")
    result = run_example(broker_url(shared_broker), "test_xmlrpc.py")
    assert result.returncode == 0, result.stderr
    used = re.search(r"set\('(xmlrpc-example-\d+)'", result.stdout).group(1)
    assert_left_empty(shared_broker, used)
    # with a queue named on the command line: that queue is emptied too
    url = f"{broker_url(shared_broker)}/RPC2"
    result = run_example(broker_url(shared_broker), "test_xmlrpc.py", url, queue)
    assert result.returncode == 0, result.stderr
    assert f"DELETE /q/{queue} (clean up)" in result.stdout
    assert_left_empty(shared_broker, queue)


def test_the_client_example_pushes_jobs_and_consumes_each_once(shared_broker):
    result = run_example(broker_url(shared_broker), "client_jobs.py", "--jobs", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    queue = re.search(r"pushed 4 jobs to (\S+):", result.stdout).group(1)
    handled = re.findall(r"^handled \S+: (job \d) \(delivery 1\)$", result.stdout, re.MULTILINE)
    assert handled == ["job 1", "job 2", "job 3", "job 4"]
    assert "4 jobs handled and acked" in result.stdout
    assert_left_empty(shared_broker, queue)


def test_the_client_example_without_a_broker_says_so_and_exits_2():
    result = run_example(f"http://127.0.0.1:{free_port()}", "client_jobs.py")
    assert result.returncode == 2
    assert "cannot use the broker" in result.stderr
    assert "Traceback" not in result.stderr
