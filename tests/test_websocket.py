"""The WebSocket route /ws/<queue> itself: handshake rules, echo, ping, close, flow control.

Delivery to WebSocket consumers, next to COMET and SSE, is in test_streaming; password
checks during the handshake are in test_password_checks.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import psutil

from tests.support import (
    WebSocketStream,
    post_value,
    wait_consumers,
    ws_client_frame,
    ws_handshake,
    ws_read_frame,
    ws_read_head,
)


def test_websocket_delivery_echo_ping_and_close(shared_broker, queue):
    ws = WebSocketStream(shared_broker.port, queue)
    wait_consumers(shared_broker, queue, 1)
    key = post_value(shared_broker, queue, "to the socket")
    assert json.loads(ws.ws.recv(timeout=5)) == {"key": key, "value": "to the socket"}
    ws.ws.send("echo this \u2603")
    assert ws.ws.recv(timeout=5) == "echo this \u2603"
    ws.ws.ping().wait(5)
    ws.ws.close()
    assert ws.ws.close_code == 1000
    wait_consumers(shared_broker, queue, 0)


def test_websocket_without_origin_header_and_plain_get_refused(shared_broker, queue):
    ws = WebSocketStream(shared_broker.port, queue, origin=None)
    wait_consumers(shared_broker, queue, 1)
    ws.close()
    plain = shared_broker.get(f"/ws/{queue}")
    assert plain.status == 400
    assert "WebSocket" in plain.json()["error"]
    old = shared_broker.get(
        f"/ws/{queue}",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "8",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert old.status == 426
    assert old.headers["sec-websocket-version"] == "13"


# -- echoes follow flow control: a client that sends and never reads -----------------------

FRAME = 64 * 1024
FRAMES = 1200  # 75 MiB: far more than the socket buffers on both sides hold
MAX_GROWTH = 64 * 1024 * 1024


def test_a_websocket_client_that_never_reads_cannot_inflate_the_broker(broker_factory, queue):
    broker = broker_factory()
    process = psutil.Process(broker.proc.pid)
    request, _ = ws_handshake(f"/ws/{queue}", {})
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=120)
    try:
        sock.sendall(request)
        status, _, rest = ws_read_head(sock)
        assert status == 101
        before = process.memory_info().rss
        payload = b"x" * FRAME
        frame = ws_client_frame(payload)
        sent = [0]

        def send_all() -> None:
            for _ in range(FRAMES):
                sock.sendall(frame)
                sent[0] += 1

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()

        # Nothing is read: once the buffers are full, the broker must stop taking frames.
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 3.0 and sender.is_alive():
            if sent[0] != last:
                last, still_since = sent[0], time.monotonic()
            time.sleep(0.1)
        assert sender.is_alive(), "the broker read every frame while its echoes went unread"
        stalled_at = sent[0]
        growth = process.memory_info().rss - before
        assert growth < MAX_GROWTH, f"broker RSS grew {growth >> 20} MiB"
        stats = broker.get("/stats/", timeout=10)  # the broker serves others meanwhile
        assert stats.status == 200

        # Reading again resumes the echoes, every frame whole and in order.
        pending = bytearray(rest)
        for number in range(FRAMES):
            opcode, echoed = ws_read_frame(sock, pending)
            assert opcode == 0x1 and echoed == payload, f"echo {number} is wrong"
        sender.join(60)
        assert sent[0] == FRAMES and stalled_at < FRAMES
        assert process.memory_info().rss - before < MAX_GROWTH
    finally:
        sock.close()
