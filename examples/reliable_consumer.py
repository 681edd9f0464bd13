#!/usr/bin/env python3
"""Consume a RestMQ queue at least once, with nothing but the standard library.

    RESTMQ_URL=http://127.0.0.1:8888 python3 reliable_consumer.py jobs

Each round long-polls for a message under a lease (``GET /q/jobs?wait=20&lease=30``),
processes it, then acknowledges it with its receipt (``DELETE /q/jobs?receipt=...``).
While a message is being processed a helper thread extends its lease every
third of the lease, so slow work keeps it. If this process dies before the ack,
the lease runs out and the broker hands the message to another consumer: a
message is processed at least once, and removed only once it was processed.

Each message processed is printed as a JSON line ``{"event": "got", ...}``, and
each ack as ``{"event": "acked", ...}`` (or ``"lost"`` when the lease was gone,
e.g. after a very long pause: then someone else has the message).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def call(method: str, url: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Consumer:
    def __init__(self, base: str, queue: str, lease: int, wait: int) -> None:
        self.queue_url = f"{base.rstrip('/')}/q/{urllib.parse.quote(queue, safe='')}"
        self.lease = lease
        self.wait = wait

    def take(self) -> dict | None:
        """Long-poll for one message under a lease; None when none came in time."""
        status, body = call(
            "GET", f"{self.queue_url}?wait={self.wait}&lease={self.lease}", self.wait + 10
        )
        if status == 204:
            return None
        if status != 200:
            raise RuntimeError(f"take answered {status}: {body[:200]!r}")
        return json.loads(body)

    def extend(self, receipt: str) -> bool:
        query = urllib.parse.urlencode({"receipt": receipt, "lease": self.lease})
        return call("POST", f"{self.queue_url}?{query}", 10)[0] == 200

    def ack(self, receipt: str) -> bool:
        """True when the message is deleted; False when the lease had run out."""
        query = urllib.parse.urlencode({"receipt": receipt})
        status, body = call("DELETE", f"{self.queue_url}?{query}", 10)
        if status not in (200, 409):
            raise RuntimeError(f"ack answered {status}: {body[:200]!r}")
        return status == 200


def keep_extending(consumer: Consumer, receipt: str, done: threading.Event) -> None:
    """Extend the lease every third of it until the work is done."""
    while not done.wait(consumer.lease / 3):
        if not consumer.extend(receipt):
            return  # gone: the ack will say so


def process(message: dict, work_seconds: float) -> None:
    """The work. Here: report the message, then take ``work_seconds`` over it."""
    report("got", message)
    time.sleep(work_seconds)


def report(event: str, message: dict) -> None:
    fields = {k: message[k] for k in ("key", "value", "receipt", "deliveries")}
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("queue")
    parser.add_argument("--lease", type=int, default=30, help="lease seconds (default 30)")
    parser.add_argument("--wait", type=int, default=20, help="long-poll seconds (default 20)")
    parser.add_argument("--work", type=float, default=0.0, help="seconds each message takes")
    parser.add_argument(
        "--idle-exit", type=int, default=0, help="exit after this many empty polls (0: never)"
    )
    args = parser.parse_args(argv)
    consumer = Consumer(
        os.environ.get("RESTMQ_URL", "http://127.0.0.1:8888"), args.queue, args.lease, args.wait
    )
    idle = 0
    while True:
        try:
            message = consumer.take()
        except (OSError, RuntimeError) as error:
            print(f"take failed: {error}; retrying", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        if message is None:
            idle += 1
            if args.idle_exit and idle >= args.idle_exit:
                return 0
            continue
        idle = 0
        done = threading.Event()
        helper = threading.Thread(
            target=keep_extending, args=(consumer, message["receipt"], done), daemon=True
        )
        helper.start()
        try:
            process(message, args.work)
        finally:
            done.set()
        while True:
            try:
                acked = consumer.ack(message["receipt"])
                break
            except (OSError, RuntimeError) as error:  # the broker is busy or restarting
                print(f"ack failed: {error}; retrying", file=sys.stderr, flush=True)
                time.sleep(0.2)
        report("acked" if acked else "lost", message)


if __name__ == "__main__":
    sys.exit(main())
