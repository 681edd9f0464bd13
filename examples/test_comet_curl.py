"""A COMET consumer built on ``curl -N``: the script runs curl and parses its lines.

    python examples/test_comet_curl.py QUEUE [--count N]     consume QUEUE
    python examples/test_comet_curl.py                       a demo on a queue of its own

Any program that can read lines can be a RestMQ consumer: ``curl -N`` (no buffering)
prints the broker's ``/c/<queue>`` stream as it arrives, one JSON line per message,
``{"key": "q:1", "value": "..."}``, and ``null`` when the queue is purged.

Without QUEUE the script runs a demo: it starts curl on a new queue, posts three
messages, prints what curl delivers, stops curl and purges the queue. The purged queue
stays listed, empty, in ``/stats/`` and on the dashboard, because the protocol has no way
to remove a queue: ``DELETE /q/<queue>`` deletes its messages, not its name. Each demo run
uses a queue of its own, and so leaves one such empty queue behind.

The broker is $RESTMQ_URL (default http://127.0.0.1:8888); curl itself understands
http://user:password@host:8888 for acl.conf.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

URL = os.environ.get("RESTMQ_URL", "http://127.0.0.1:8888").rstrip("/")


def curl(*args: str) -> subprocess.Popen:
    if shutil.which("curl") is None:
        sys.exit("this example needs curl")
    return subprocess.Popen(
        ["curl", "--silent", "--show-error", "--no-buffer", *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def queue_url(prefix: str, queue: str) -> str:
    return f"{URL}/{prefix}/{urllib.parse.quote(queue, safe='')}"


def print_messages(process: subprocess.Popen, count: int | None) -> int:
    """Parse curl's lines and print each message; return how many there were."""
    received = 0
    try:
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            message = json.loads(line)
            if message is None:
                print("the queue was purged; the stream ended", flush=True)
                break
            received += 1
            print(f"{message['key']}: {message['value']}", flush=True)
            if count is not None and received >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(10)
    return received


def post(queue: str, value: str) -> str:
    with curl("--data-urlencode", f"value={value}", queue_url("q", queue)) as process:
        return process.stdout.read().strip()


def demo() -> int:
    queue = f"curl-example-{os.getpid()}-{int(time.time() * 1000)}"
    print(f"curl -N {queue_url('c', queue)}", flush=True)
    consumer = curl(queue_url("c", queue))
    try:
        for value in ("one", "two", "three"):
            print(f"posted {post(queue, value)}", flush=True)
        received = print_messages(consumer, count=3)
    finally:
        consumer.kill()
        consumer.wait()
        with curl("-X", "DELETE", queue_url("q", queue)) as purge:  # clean up behind us
            purge.stdout.read()
    return 0 if received == 3 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("queue", nargs="?", help="the queue to consume (none: a demo)")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    args = parser.parse_args()
    if args.queue is None:
        return demo()
    print(f"curl -N {queue_url('c', args.queue)}", flush=True)
    print_messages(curl(queue_url("c", args.queue)), args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
