"""A COMET consumer: print each message of a queue as it arrives, with only the standard library.

    python examples/test_comet.py QUEUE [--count N]     consume QUEUE
    python examples/test_comet.py                       a demo on a queue of its own

``GET /c/<queue>`` is a long-lived response: the broker writes one JSON line per message,
``{"key": "q:1", "value": "..."}``, first the queue's backlog, then each new message, and
a last line ``null`` when the queue is purged. Reading these lines is all a consumer does.
The consumer takes the messages off the queue, as a pop would.

Without QUEUE the script runs a demo: it consumes a new queue, posts three messages to it
from a second thread once the stream is open, prints them as they arrive, and purges the
queue before it exits. The purged queue stays listed, empty, in ``/stats/`` and on the
dashboard, because the protocol has no way to remove a queue: ``DELETE /q/<queue>``
deletes its messages, not its name. Each demo run uses a queue of its own (so that runs
never take each other's messages), and so leaves one such empty queue behind.

The broker is $RESTMQ_URL (default http://127.0.0.1:8888); for acl.conf put the user and
password in it: http://user:password@host:8888.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request

URL = os.environ.get("RESTMQ_URL", "http://127.0.0.1:8888").rstrip("/")
_printing = threading.Lock()


def say(text: str) -> None:
    """Print a whole line at once: the demo's producer thread prints too."""
    with _printing:
        print(text, flush=True)


def auth_headers(url: str) -> dict[str, str]:
    """A Basic Authorization header from the user and password in the URL, if any."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return {}
    pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def call(method: str, path: str, form: dict | None = None) -> bytes:
    """One request to the broker (urllib, which cannot read a user:password URL itself)."""
    parts = urllib.parse.urlsplit(URL)
    base = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # without user:password
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method, headers=auth_headers(URL)
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def consume(queue: str, count: int | None, opened: threading.Event | None = None) -> int:
    """Print messages of ``queue`` as they arrive; return how many were printed.

    ``opened`` is set once the broker answered: from then on it delivers what arrives.
    """
    parts = urllib.parse.urlsplit(URL)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=None)
    path = "/c/" + urllib.parse.quote(queue, safe="")
    connection.request("GET", path, headers=auth_headers(URL))
    response = connection.getresponse()
    if response.status != 200:
        sys.exit(f"GET {path}: {response.status} {response.read().decode(errors='replace')}")
    say(f"consuming {queue} at {URL} ...")
    if opened is not None:
        opened.set()
    received = 0
    try:
        for raw in response:  # one line per message (http.client undoes the chunking)
            line = raw.decode().strip()
            if not line:
                continue
            message = json.loads(line)
            if message is None:  # the queue was purged: the stream ends
                say("the queue was purged; the stream ended")
                break
            received += 1
            say(f"{message['key']}: {message['value']}")
            if count is not None and received >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        connection.close()
    return received


def demo() -> int:
    queue = f"comet-example-{os.getpid()}-{int(time.time() * 1000)}"

    opened = threading.Event()

    def produce() -> None:
        # Posted earlier, the messages would still arrive (as the backlog); posted once
        # the stream is open, they show a consumer getting messages as they come.
        if not opened.wait(10):
            return
        for value in ("hello", "from the producer", "goodbye"):
            key = call("POST", "/q/" + queue, {"value": value}).decode().strip()
            say(f"posted {key}")

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        received = consume(queue, count=3, opened=opened)
    finally:
        producer.join(10)
        call("DELETE", "/q/" + queue)  # clean up behind us
    return 0 if received == 3 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("queue", nargs="?", help="the queue to consume (none: a demo)")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    args = parser.parse_args()
    if args.queue is None:
        return demo()
    consume(args.queue, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
