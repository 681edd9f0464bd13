"""Limits that protect the broker: --header-timeout (for heads and bodies) and --max-consumers."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from websockets.exceptions import InvalidStatus

from restmq.runtime.options import Options
from tests import support as wire
from tests.support import (
    Broker,
    HttpStream,
    WebSocketStream,
    nothing_stored,
    startup_refusal,
    wait_for,
)


def test_help_shows_the_limits_and_their_defaults():
    # what `twistd restmq --help` prints (test_foundation runs the real one)
    text = " ".join(Options().getUsage().split())
    for option, default in [
        ("--max-consumers", "10000"),
        ("--header-timeout", "30.0"),
        ("--max-body", "8388608"),
    ]:
        entry = re.search(re.escape(option) + r"=(.*?)\[default: ([^\]]+)\]", text)
        assert entry, option
        assert entry.group(2) == default
        assert len(entry.group(1).strip()) > 20, f"{option} is not explained"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--max-consumers", "0"], "--max-consumers must be greater than 0"),
        (["--max-consumers", "many"], "--max-consumers takes a whole number"),
        (["--header-timeout", "soon"], "--header-timeout takes a number of seconds"),
        (["--header-timeout", "-1"], "--header-timeout must be greater than 0"),
    ],
)
def test_bad_limits_are_refused(tmp_path, args, complaint):
    assert complaint in startup_refusal(tmp_path, *args)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    broker = Broker(
        tmp_path_factory.mktemp("limits"), ["--header-timeout", "1", "--max-consumers", "2"]
    )
    broker.start()
    yield broker
    broker.stop()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_client_that_never_finishes_its_headers_is_dropped(limited):
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(b"GET /stats/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        assert closed_by_server(sock, 15)
    wait_for(
        lambda: "dropping a client that did not finish its headers in time" in limited.log(),
        10,
        what="the log line",
    )
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as idle:
        assert closed_by_server(idle, 15), "a connection that sends nothing is dropped too"


def test_a_client_that_finishes_in_time_is_served(limited):
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(b"GET /stats/ HTTP/1.1\r\n")
        time.sleep(0.2)
        sock.sendall(b"Host: localhost\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")


def test_streaming_consumers_beyond_the_limit_get_503(limited, queue):
    first = HttpStream(limited.port, queue).start()
    second = WebSocketStream(limited.port, queue).start()
    try:
        wait_for(
            lambda: limited.get(f"/stats/{queue}").json()["consumers"] == 2,
            10,
            what="two consumers",
        )
        third = limited.get(f"/c/{queue}")
        assert third.status == 503
        assert "retry-after" in third.headers
        assert third.json()["error"]
        with pytest.raises(InvalidStatus) as refused:
            WebSocketStream(limited.port, queue)
        assert refused.value.response.status_code == 503
        first.close()
        wait_for(
            lambda: limited.get(f"/stats/{queue}").json()["consumers"] == 1,
            10,
            what="the first consumer to leave",
        )
        again = HttpStream(limited.port, queue).start()
        assert again.response.status == 200
        again.close()
    finally:
        first.close()
        second.close()


# -- a request body that does not arrive within --header-timeout ------------------------


@pytest.fixture
def impatient_broker(broker_factory):
    return broker_factory("--header-timeout", "1")


def body_head(queue: str, length: int) -> bytes:
    return (
        f"POST /q/{queue} HTTP/1.1\r\nHost: test\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_that_never_completes_is_dropped(impatient_broker, queue):
    b = impatient_broker
    with wire.connect(b.port) as sock:
        sock.sendall(body_head(queue, 100) + b"value=")  # 6 of 100 bytes, then nothing
        started = time.monotonic()
        # the server closes the connection without an answer, well before the client gives up
        assert wire.read_until_closed(sock, 30) == b""
        assert time.monotonic() - started < 25
    wait_for(
        lambda: "did not finish its request body in time" in b.log(),
        20,
        what="the broker to log the dropped body",
    )
    assert nothing_stored(b, queue)


def test_a_body_sent_in_pieces_in_time_is_served_and_the_connection_kept(impatient_broker, queue):
    b = impatient_broker
    body = b"value=in+pieces"
    with wire.connect(b.port) as sock:
        sock.sendall(body_head(queue, len(body)) + body[:6])
        time.sleep(0.1)
        sock.sendall(body[6:])
        reader = wire.Reader(sock)
        first = reader.read_response("POST")
        assert (first.status, first.body) == (200, f"{queue}:1\r\n".encode())
        # the same keep-alive connection serves the next request
        sock.sendall(f"GET /q/{queue} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        second = reader.read_response()
        assert second.status == 200
        assert json.loads(second.body)["value"] == "in pieces"
