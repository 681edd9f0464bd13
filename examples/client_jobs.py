#!/usr/bin/env python3
"""Produce and consume jobs with the Python client, restmq.client (at least once).

    RESTMQ_URL=http://127.0.0.1:8888 python3 client_jobs.py [--jobs N]

Unlike the other examples this one needs the restmq package (the client ships in it).
It pushes N jobs to a queue of its own in one atomic batch (``client.push_many``: sent
with an Idempotency-Key, so a batch tried again after a lost answer is stored once),
then consumes them with ``client.consume``: each job is taken under a lease, handed to
``handle``, and acked when ``handle`` returns (released when it raises, so it comes
back); the lease is extended while ``handle`` works. Once every job was handled it
purges the queue (which stays listed, empty, in /stats/) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time

from restmq.client import Client, Message, RestMQError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="how many jobs (default 5)")
    args = parser.parse_args(argv)
    queue = f"client-jobs-{os.getpid()}-{time.time_ns() // 1_000_000}"
    url = os.environ.get("RESTMQ_URL", "http://127.0.0.1:8888")
    with Client(url) as client:
        try:
            keys = client.push_many(queue, [f"job {n}" for n in range(1, args.jobs + 1)])
            print(f"pushed {len(keys)} jobs to {queue}: {keys[0]} to {keys[-1]}")
            all_done = threading.Event()
            handled: list[str] = []

            def handle(message: Message) -> None:
                # the work; a job that raises here is released and handled again
                print(f"handled {message.key}: {message.value} (delivery {message.deliveries})")
                handled.append(message.key)
                if len(handled) == len(keys):
                    all_done.set()  # consume() returns before its next take

            count = client.consume(queue, handle, lease=30, wait=5, stop=all_done)
            print(f"{count} jobs handled and acked")
        except RestMQError as error:
            print(f"cannot use the broker at {url}: {error}", file=sys.stderr)
            return 2
        finally:
            with contextlib.suppress(RestMQError):  # a broker gone has nothing to clean up
                client.purge(queue)
    return 0


if __name__ == "__main__":
    sys.exit(main())
