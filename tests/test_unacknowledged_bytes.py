"""A message written to a consumer's socket is delivered only once its peer's TCP
acknowledged it.

Linux lets a socket's send buffer grow to megabytes: a consumer that stops reading
leaves them in the broker's kernel, neither read nor in the queue. When such a
stream ends (the broker stops, or drops it as too slow), every message is afterwards
either read by a consumer or back in its queue; and what a consumer's TCP had
acknowledged does not come back to the queue.
"""

from __future__ import annotations

import json
import signal
import ssl
import sys
from pathlib import Path

import pytest

from tests.support import (
    RawSseStream,
    https_request,
    publish_in_batches,
    self_signed,
    settled_length,
    take_all,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's send queue is read on Linux only"
)

VALUES = [f"{i:05d}-" + "x" * 1018 for i in range(2000)]  # 2,000 x 1 KB


def more_than_a_send_buffer() -> list[str]:
    """1 KB messages, half as many again as the largest send buffer Linux grows."""
    largest = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return [f"{i:05d}-" + "x" * 1018 for i in range(max(2000, largest * 3 // 2 // 1024))]


def consumers_of(broker, queue: str) -> int:
    return broker.get(f"/stats/{queue}").json().get("consumers", 0)


def values_of(messages: list[dict]) -> set[str]:
    return {message["value"] for message in messages}


def account(values: list[str], read: set[str], back: list[str]) -> str:
    lost = set(values) - read - set(back)
    return f"{len(read)} read, {len(back)} back in the queue, {len(lost)} lost"


def stop_and_restart(broker) -> None:
    """SIGTERM, then the broker again on the same data directory."""
    broker.proc.send_signal(signal.SIGTERM)
    broker.proc.wait(30)
    assert "RestMQ stopped" in broker.log()
    broker.start()


def test_a_stop_with_two_paused_broadcast_consumers_loses_nothing_in_their_sockets(
    broker_factory, queue
):
    broker = broker_factory()
    # Small receive buffers: the broker's kernel still takes megabytes for each of them.
    streams = [RawSseStream(broker.port, queue, receive_buffer=4096) for _ in range(2)]
    values = more_than_a_send_buffer()
    wait_for(lambda: consumers_of(broker, queue) == 2)
    publish_in_batches(broker, queue, values)
    settled_length(broker, queue)  # what their sockets and backlogs hold is taken
    stop_and_restart(broker)  # the consumers read nothing while the broker stops
    # What each socket holds stays readable after the broker hung up (reset or not).
    read = set().union(*(values_of(stream.read_to_end()) for stream in streams))
    back = [message["value"] for message in take_all(broker, queue)]
    assert set(values) <= read | set(back), account(values, read, back)
    assert len(back) == len(set(back)), "put back once, not once per consumer"


def test_a_consumer_dropped_as_too_slow_loses_nothing_in_its_socket(broker_factory, queue):
    # A batch is 64 KB: more than Twisted buffers before it pauses the stream, so
    # what follows waits in the broker, more than one message: too much.
    broker = broker_factory("--consumer-buffer", "1024")
    stalled = RawSseStream(broker.port, queue)
    wait_for(lambda: consumers_of(broker, queue) == 1)
    publish_in_batches(broker, queue, VALUES)
    wait_for(lambda: consumers_of(broker, queue) == 0, what="the slow consumer to be dropped")
    assert "fell" in broker.log() and "behind; disconnecting it" in broker.log()
    read = values_of(stalled.read_to_end())
    back = [message["value"] for message in take_all(broker, queue)]
    assert set(VALUES) <= read | set(back), account(VALUES, read, back)
    assert not read & set(back), "what its TCP took was not put back"


def test_what_a_consumer_read_does_not_come_back_and_nothing_is_lost(broker_factory, queue):
    broker = broker_factory()
    # A small receive buffer: the stream must not all fit in the consumer's kernel.
    reader = RawSseStream(broker.port, queue, receive_buffer=4096)
    values = more_than_a_send_buffer()  # the broker's kernel cannot take them all
    wait_for(lambda: consumers_of(broker, queue) == 1)
    publish_in_batches(broker, queue, values)
    early = values_of(reader.read_at_least(300))  # then it reads no more until the stop
    settled_length(broker, queue)
    stop_and_restart(broker)
    late = values_of(reader.read_to_end()) - early
    back = [message["value"] for message in take_all(broker, queue)]
    read = early | late
    assert set(values) <= read | set(back), account(values, read, back)
    assert not early & set(back), "a message the consumer read came back to the queue"
    assert len(back) == len(set(back))


def test_over_tls_a_stop_loses_nothing_in_the_sockets(broker_factory, queue, tmp_path):
    cert, key = self_signed(tmp_path / "pki")
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    broker = broker_factory(*tls, wait=False)
    context = ssl.create_default_context(cafile=str(cert))

    def answering() -> bool:
        try:
            return https_request(broker.port, context, "GET", "/stats/")[0] == 200
        except OSError:
            return False

    wait_for(answering, 20, what="the broker over HTTPS")
    # Big enough to hold whole TLS records (16 KiB), small enough to hold few.
    streams = [
        RawSseStream(broker.port, queue, receive_buffer=65536, tls=context) for _ in range(2)
    ]

    def consumers() -> int:
        status, body = https_request(broker.port, context, "GET", f"/stats/{queue}")
        return json.loads(body).get("consumers", 0) if status == 200 else -1

    wait_for(lambda: consumers() == 2)
    values = more_than_a_send_buffer()
    for i in range(0, len(values), 100):
        body = json.dumps({"values": values[i : i + 100]})
        headers = {"Content-Type": "application/json"}
        assert https_request(broker.port, context, "POST", f"/q/{queue}", body, headers)[0] == 200
    broker.proc.send_signal(signal.SIGTERM)
    broker.proc.wait(30)
    read = set().union(*(values_of(stream.read_to_end()) for stream in streams))
    broker.args = []  # counted over plain HTTP
    broker.start()
    back = [message["value"] for message in take_all(broker, queue)]
    # Near the unacknowledged edge a message may come twice over TLS; none is lost.
    assert set(values) <= read | set(back), account(values, read, back)
