"""Request heads are bounded: in bytes (--max-header-bytes) and in header lines
(--max-headers). Past either limit the broker answers 431 at once and drops the
rest of the head as it arrives, so a flood of headers neither blocks the broker
nor fills its memory."""

from __future__ import annotations

import json
import subprocess
import threading
import time

from tests import support as wire
from tests.support import JSON_TYPE, TWISTD, broker_rss

HEAD_TOO_LARGE = 431


def flood(count: int) -> bytes:
    """A request head with ``count`` small headers (about 9 bytes each)."""
    return b"GET /stats/ HTTP/1.1\r\nHost: t\r\n" + b"".join(
        b"X-H%d: v\r\n" % n for n in range(count)
    )


def assert_431(answer: wire.RawResponse, words: str) -> None:
    assert answer.status == HEAD_TOO_LARGE, answer
    assert answer.headers["content-type"] == JSON_TYPE
    assert answer.headers["connection"] == "close"
    assert words in json.loads(answer.body)["error"]


def test_a_flood_of_headers_gets_431_fast_without_growing_the_broker(shared_broker):
    broker = shared_broker
    assert broker.get("/stats/").status == 200
    before = broker_rss(broker)
    head = flood(550_000)  # about 5 MB, never ending in a blank line
    assert len(head) > 5_000_000
    sent = []

    with wire.connect(broker.port) as sock:

        def send() -> None:
            try:
                sock.sendall(head)
                sent.append(len(head))
            except OSError:
                pass  # the broker hung up first: fine

        started = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = wire.Reader(sock).read_response()
        elapsed = time.monotonic() - started
        assert_431(answer, "more than 100 header lines")
        assert elapsed < 2, elapsed
        # meanwhile other clients are served
        served = time.monotonic()
        assert broker.get("/stats/").status == 200
        assert time.monotonic() - served < 2
        sender.join(15)
    assert sent == [len(head)]  # the broker read the rest and dropped it (no reset)
    grown = broker_rss(broker) - before
    assert grown < 4 * 1024 * 1024, f"the broker grew by {grown} bytes"


def test_one_header_too_many_gets_431_and_the_limit_itself_is_fine(shared_broker):
    [answer] = wire.exchange(shared_broker.port, flood(99) + b"\r\n")  # Host + 99 = 100
    assert answer.status == 200
    [answer] = wire.exchange(shared_broker.port, flood(100) + b"\r\n")
    assert_431(answer, "more than 100 header lines")


def test_a_head_over_64_kib_gets_431(shared_broker):
    port = shared_broker.port
    one_long_line = b"GET /stats/ HTTP/1.1\r\nX-Big: " + b"v" * 70_000 + b"\r\n\r\n"
    [answer] = wire.exchange(port, one_long_line)
    assert_431(answer, "over 65536 bytes")
    long_target = b"GET /stats/" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"
    [answer] = wire.exchange(port, long_target)
    assert_431(answer, "over 65536 bytes")
    field = b"X-Big: " + b"v" * 30_000 + b"\r\n"  # three of them: over the whole head's limit
    [answer] = wire.exchange(port, b"GET /stats/ HTTP/1.1\r\n" + field * 3 + b"\r\n")
    assert_431(answer, "over 65536 bytes")


def test_the_limits_are_options(broker_factory):
    broker = broker_factory("--max-header-bytes", "1024", "--max-headers", "3")
    fine = b"GET /stats/ HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
    [answer] = wire.exchange(broker.port, fine)
    assert answer.status == 200
    [answer] = wire.exchange(broker.port, fine.replace(b"\r\n\r\n", b"\r\nD: 4\r\n\r\n"))
    assert_431(answer, "more than 3 header lines")
    [answer] = wire.exchange(
        broker.port, b"GET /stats/ HTTP/1.1\r\nA: " + b"x" * 1100 + b"\r\n\r\n"
    )
    assert_431(answer, "over 1024 bytes")
    # keep-alive: each request has its own allowance
    with wire.connect(broker.port) as sock:
        reader = wire.Reader(sock)
        for _ in range(5):
            sock.sendall(fine)
            assert reader.read_response().status == 200


def test_the_options_are_in_the_help():
    result = subprocess.run(
        [TWISTD, "restmq", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--max-header-bytes=" in result.stdout
    assert "--max-headers=" in result.stdout
    assert "431" in result.stdout
