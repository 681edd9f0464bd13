"""Password checks run in worker threads: a flood of wrong scrypt passwords must not stall
the broker, and a WebSocket handshake waits for its verdict without losing the bytes its
client sent early, nor registering a client that left meanwhile.
"""

from __future__ import annotations

import json
import secrets
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import (
    CHALLENGE,
    basic,
    call,
    consumers_of,
    make_hash,
    recv_exactly,
    wait_for,
    ws_client_frame,
    ws_handshake,
    ws_read_frame,
    ws_read_head,
)

PRODUCER_PASSWORD = "flood-proof producer"
WS_PASSWORD = "flood-proof ws"

ACL = """\
[rest:producer]
username = producer
password = {producer_hash}

[websocket:consumer]
username = ws
password = {ws_hash}
"""


@pytest.fixture(scope="module")
def acl_text() -> str:
    return ACL.format(producer_hash=make_hash(PRODUCER_PASSWORD), ws_hash=make_hash(WS_PASSWORD))


@pytest.fixture
def guarded(broker_factory, tmp_path_factory, acl_text):
    """A fresh broker (no password checked yet) whose producer and WebSocket routes want
    scrypt-hashed passwords; /stats/ stays open."""
    workdir = tmp_path_factory.mktemp("scrypt-broker")
    (workdir / "acl.conf").write_text(acl_text)
    return broker_factory(workdir=workdir)


def ws_cookie(password: str) -> dict[str, str]:
    return {"Cookie": f"auth=ws:{password}"}


# A broker that checked scrypt on its reactor thread (~35 ms a check here) would make a
# /stats/ request wait behind a round of the flood's checks, about twice FLOOD_THREADS
# checks: measured with such a model, a median of 0.54 s with 8 threads and 1.1 s with 16.
# Checked in worker threads, /stats/ answers in a few milliseconds, even on a busy machine.
FLOOD_THREADS = 16
MAX_MEDIAN_LATENCY = 0.25  # seconds; a blocking broker would take four times that
FLOOD_LIMIT = 2000  # the flood goes on until the measurements are done, never further


def test_a_wrong_password_flood_does_not_stall_other_clients(guarded, queue):
    port = guarded.port
    lock, stop = threading.Lock(), threading.Event()
    started, answers = [0], []

    def flood() -> None:
        while not stop.is_set():
            with lock:
                if started[0] >= FLOOD_LIMIT:
                    return
                started[0] += 1
            wrong = basic("producer", secrets.token_urlsafe(12))  # never the same twice
            response = call(
                port, "POST", f"/q/{queue}", form={"value": "flood"}, headers=wrong, timeout=120
            )
            with lock:
                answers.append((response.status, response.json()))

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(FLOOD_THREADS)]
    for thread in flooders:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= FLOOD_THREADS, 60, what="the flood to be under way")
        latencies = []
        for _ in range(20):
            begun = time.perf_counter()
            stats = guarded.get("/stats/", timeout=30)
            latencies.append(time.perf_counter() - begun)
            assert stats.status == 200
        # The right password is still let in, while the flood goes on.
        added = call(
            port,
            "POST",
            f"/q/{queue}",
            form={"value": "the real one"},
            headers=basic("producer", PRODUCER_PASSWORD),
            timeout=60,
        )
        flood_was_running = len(answers) < FLOOD_LIMIT
    finally:
        stop.set()
        for thread in flooders:
            thread.join(180)
    assert flood_was_running, "the flood ended before the other clients were measured"
    assert statistics.median(latencies) < MAX_MEDIAN_LATENCY, sorted(latencies)
    assert added.status == 200, added.body
    assert len(answers) == started[0] >= FLOOD_THREADS
    wrong = {"error": "wrong username or password (rest:producer)"}
    assert all(answer == (401, wrong) for answer in answers), answers[:3]
    # Nothing of the flood was stored; the real message is the only one.
    assert guarded.get(f"/stats/{queue}").json()["len"] == 1
    popped = guarded.get(f"/q/{queue}")
    assert popped.json()["value"] == "the real one"


def test_websocket_handshake_waits_for_the_scrypt_verdict_and_keeps_early_frames(guarded, queue):
    request, accept = ws_handshake(f"/ws/{queue}", ws_cookie(WS_PASSWORD))
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        # The frame goes out with the handshake, before any answer: while the broker checks
        # the password (first time: scrypt, in a thread) it must keep these bytes.
        sock.sendall(request + ws_client_frame(b"early bird"))
        status, headers, rest = ws_read_head(sock)
        assert status == 101
        assert headers["sec-websocket-accept"] == accept
        pending = bytearray(rest)
        assert ws_read_frame(sock, pending) == (0x1, b"early bird")
        key = call(
            guarded.port,
            "POST",
            f"/q/{queue}",
            form={"value": "to ws"},
            headers=basic("producer", PRODUCER_PASSWORD),
        ).text.strip()
        opcode, payload = ws_read_frame(sock, pending)
        assert (opcode, json.loads(payload)) == (0x1, {"key": key, "value": "to ws"})
        assert consumers_of(guarded, queue) == 1

    # A wrong password, also checked in a thread, gets its 401 and no upgrade.
    request, _ = ws_handshake(f"/ws/{queue}", ws_cookie("not it"))
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        sock.sendall(request)
        status, headers, rest = ws_read_head(sock)
        assert status == 401
        assert headers["www-authenticate"] == CHALLENGE
        body = rest + recv_exactly(sock, int(headers["content-length"]) - len(rest))
        assert json.loads(body) == {"error": "wrong username or password (websocket:consumer)"}


PROBES = 4


def wait_until_checked_after(broker) -> None:
    """Return once the scrypt checks the broker began before this call have given their verdict.

    The broker checks scrypt passwords two at a time, first come first served. Wrong-password
    probes sent now queue behind any check under way; by the time all of them have got
    their 401, the other slot has run PROBES checks one after another, which takes PROBES
    times as long as the check that was under way: that one has long given its verdict.
    """

    def probe(_) -> int:
        wrong = basic("producer", secrets.token_urlsafe(12))  # never remembered
        return call(broker.port, "POST", "/q/probe", form={"value": "x"}, headers=wrong).status

    with ThreadPoolExecutor(PROBES) as pool:
        assert list(pool.map(probe, range(PROBES))) == [401] * PROBES


def test_a_websocket_client_gone_during_the_password_check_is_not_registered(guarded, queue):
    request, _ = ws_handshake(f"/ws/{queue}", ws_cookie(WS_PASSWORD))
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        sock.sendall(request)
    # The right password, first seen: the verdict comes after the client left.
    wait_until_checked_after(guarded)
    assert consumers_of(guarded, queue) == 0
    assert "WebSocket handshake failed" not in guarded.log()
    # The verdict was remembered: the next client is upgraded at once, and counted.
    request, _ = ws_handshake(f"/ws/{queue}", ws_cookie(WS_PASSWORD))
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        sock.sendall(request)
        assert ws_read_head(sock)[0] == 101
        wait_for(lambda: consumers_of(guarded, queue) == 1, 10, what="one WebSocket consumer")
    wait_for(lambda: consumers_of(guarded, queue) == 0, 10, what="the consumer to leave")
