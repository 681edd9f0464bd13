"""A word count, map/reduce style, with RestMQ queues and only the standard library.

    python examples/map_reduce.py [--mappers N] [--chunks N] [--text FILE]

1. The text (by default examples/map_reduce.txt) is cut into chunks, posted in one batch to a
   *map* queue whose delivery policy is roundrobin (``POST /p/<queue> policy=roundrobin``).
2. N mapper processes consume the map queue as COMET consumers (``GET /c/<queue>``). Under
   roundrobin each chunk goes to exactly one of them, in turn. A mapper counts the words of
   its chunk and posts the partial count to a *reduce* queue.
3. The reducer (this process) consumes the reduce queue and adds the partial counts up,
   until it has one for every chunk.

It prints the most frequent words and which mapper counted what, then compares the result
with a direct count of the whole text: the exit status is 0 when they agree, 1 when they do
not, 2 when the broker could not be used. Both queues are purged at the end (which also
ends the mappers' streams). They stay listed, empty, in ``/stats/`` and on the dashboard,
because the protocol has no way to remove a queue: ``DELETE /q/<queue>`` deletes its
messages, not its name. Each run uses queues of its own (``wordcount-<run>:map`` and
``:reduce``), so that runs never mix their chunks, and so leaves two such empty queues.

The broker is $RESTMQ_URL (default http://127.0.0.1:8888); for acl.conf put the user and
password in it: http://user:password@host:8888.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

URL = os.environ.get("RESTMQ_URL", "http://127.0.0.1:8888").rstrip("/")
TEXT = Path(__file__).with_name("map_reduce.txt")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
TIME_LIMIT = 60.0  # seconds for the whole run; a broker that stops answering ends it


# -- talking to the broker ---------------------------------------------------------------


def auth_headers() -> dict[str, str]:
    parts = urllib.parse.urlsplit(URL)
    if parts.username is None:
        return {}
    pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def address() -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(URL)
    return parts.scheme, parts.hostname or "127.0.0.1", parts.port


def path_of(prefix: str, queue: str) -> str:
    return f"/{prefix}/{urllib.parse.quote(queue, safe='')}"


def call(method: str, path: str, *, form: dict | None = None, body: object = None) -> bytes:
    """One request; a form, or ``body`` sent as JSON."""
    parts = urllib.parse.urlsplit(URL)
    headers = auth_headers()
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    base = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # without user:password
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def stream(queue: str, timeout: float):
    """The messages of ``queue`` as a COMET consumer gets them; ends when it is purged."""
    scheme, host, port = address()
    kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = kind(host, port, timeout=timeout)
    try:
        connection.request("GET", path_of("c", queue), headers=auth_headers())
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET /c/{queue}: {response.status} {response.read()[:200]!r}")
        for raw in response:
            line = raw.strip()
            if not line:
                continue
            message = json.loads(line)
            if message is None:  # the queue was purged
                return
            yield message
    finally:
        connection.close()


# -- map, reduce ---------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def chunks_of(text: str, count: int) -> list[str]:
    """The text cut into about ``count`` chunks of whole lines (no word is cut in two)."""
    lines = text.splitlines()
    size = max(1, -(-len(lines) // count))
    return ["\n".join(lines[i : i + size]) for i in range(0, len(lines), size)]


def mapper(name: str, map_queue: str, reduce_queue: str) -> None:
    """Count the words of each chunk that arrives; post the partial count to the reducer."""
    for message in stream(map_queue, timeout=TIME_LIMIT):
        chunk = json.loads(message["value"])
        partial = {
            "chunk": chunk["chunk"],
            "mapper": name,
            "counts": collections.Counter(words(chunk["text"])),
        }
        call("POST", path_of("q", reduce_queue), body={"value": partial})


def reducer(reduce_queue: str, chunks: int) -> tuple[collections.Counter, dict[str, list[int]]]:
    """Add up one partial count per chunk; also say which mapper counted which chunks."""
    total: collections.Counter = collections.Counter()
    counted_by: dict[str, list[int]] = collections.defaultdict(list)
    seen: set[int] = set()
    for message in stream(reduce_queue, timeout=TIME_LIMIT):
        partial = json.loads(message["value"])
        if partial["chunk"] in seen:  # never add a chunk twice
            continue
        seen.add(partial["chunk"])
        total.update(partial["counts"])
        counted_by[partial["mapper"]].append(partial["chunk"])
        if len(seen) == chunks:
            break
    return total, dict(counted_by)


def wait_for_consumers(queue: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while json.loads(call("GET", path_of("stats", queue)))["consumers"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the mappers did not connect to {queue} in 15 s")
        time.sleep(0.05)


def run(text_path: Path, mappers: int, chunk_count: int) -> int:
    text = text_path.read_text(encoding="utf-8")
    run_id = f"{os.getpid()}-{int(time.time() * 1000)}"
    map_queue, reduce_queue = f"wordcount-{run_id}:map", f"wordcount-{run_id}:reduce"
    call("POST", path_of("p", map_queue), form={"policy": "roundrobin"})
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--map-worker", f"mapper-{n}", map_queue, reduce_queue]
        )
        for n in range(1, mappers + 1)
    ]
    try:
        # roundrobin shares among the consumers connected: wait for all of them
        wait_for_consumers(map_queue, mappers)
        chunks = chunks_of(text, chunk_count)
        call(
            "POST",
            path_of("q", map_queue),
            body={"values": [{"chunk": i, "text": t} for i, t in enumerate(chunks)]},
        )
        print(f"{len(chunks)} chunks of {text_path.name} posted to {map_queue}")
        counts, counted_by = reducer(reduce_queue, len(chunks))
    finally:
        for queue in (map_queue, reduce_queue):  # clean up; this also ends the mappers
            call("DELETE", path_of("q", queue))
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    for name in sorted(counted_by):
        print(f"{name} counted chunks {sorted(counted_by[name])}")
    print("top words:")
    for word, count in counts.most_common(10):
        print(f"  {count:4d}  {word}")
    expected = collections.Counter(words(text))
    if counts != expected:
        differ = sorted(w for w in expected.keys() | counts.keys() if expected[w] != counts[w])
        print(f"WRONG: {len(differ)} words differ from a direct count, e.g. {differ[:5]}")
        return 1
    print(f"{sum(counts.values())} words, {len(counts)} distinct: same as a direct count")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mappers", type=int, default=3, help="mapper processes (default 3)")
    parser.add_argument("--chunks", type=int, default=9, help="chunks to cut the text in")
    parser.add_argument("--text", type=Path, default=TEXT, help="the text to count")
    parser.add_argument("--map-worker", nargs=3, metavar=("NAME", "MAP", "REDUCE"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    try:
        if args.map_worker:
            mapper(*args.map_worker)
            return 0
        return run(args.text, max(1, args.mappers), max(1, args.chunks))
    except (OSError, urllib.error.URLError, http.client.HTTPException, RuntimeError) as exc:
        print(f"map_reduce: cannot use the broker at {URL}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
