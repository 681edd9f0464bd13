"""The live figures behind the dashboard: ``GET /stats/`` as Server-Sent Events.

In process over a real Valkey: one stats call per tick however many watch, figures
only when they change, keep-alives, outages told once, stop ends every watch.
End to end over a raw socket: events as messages are posted, ``end`` on broker stop.
"""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from restmq.delivery.consumers import ConsumerRegistry
from restmq.engine.queues import QueueEngine
from restmq.operations.queue_operations import Operations
from restmq.operations.results import AllStats
from restmq.operations.stats_feed import StatsFeed
from restmq.runtime.service import Broker
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from restmq.web import shapes
from restmq.web.app import BrokerApplication

INTERVAL = 0.5  # the feed's tick in these tests; a task.Clock decides when ticks happen


class Recorder:
    """A watcher that keeps every call it gets, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def figures(self, stats: AllStats) -> None:
        self.calls.append(("figures", stats))

    def unavailable(self, reason: str) -> None:
        self.calls.append(("unavailable", reason))

    def heartbeat(self) -> None:
        self.calls.append(("heartbeat", None))

    def end(self, reason: str) -> None:
        self.calls.append(("end", reason))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def lengths(self, queue: str) -> list[int]:
        """The queue's length in each figures call (0 while it is not listed)."""
        return [
            next((row.stats.length for row in stats.queues if row.stats.name == queue), 0)
            for kind, stats in self.calls
            if kind == "figures"
        ]


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await task.deferLater(reactor, 0.01, lambda: None)


class CountedFeed:
    """A StatsFeed on a task.Clock whose stats calls (real ones, to Valkey) are counted."""

    def __init__(self, ops: Operations, heartbeat: float = 60.0) -> None:
        self.ops = ops
        self.clock = task.Clock()
        self.reads = 0
        self.answered = 0
        self.feed = StatsFeed(self._read, self.clock, interval=INTERVAL, heartbeat=heartbeat)

    async def _read(self) -> AllStats:
        self.reads += 1
        try:
            return await self.ops.all_stats()
        finally:
            self.answered += 1

    async def tick(self) -> None:
        """Let one tick happen and wait for its stats call to be answered."""
        before = self.answered
        self.clock.advance(INTERVAL)
        await until(lambda: self.answered > before)

    async def settle(self) -> None:
        """Wait for a stats call under way (the one a first watcher starts) to be answered."""
        await until(lambda: self.answered == self.reads)


@pytest.fixture
def server(valkey_factory):
    return valkey_factory()


def client_of(port: int, **kwargs) -> RedisClient:
    client = RedisClient(reactor, RedisAddress(host="127.0.0.1", port=port), poolsize=2, **kwargs)
    client.connect()
    return client


@pytest.fixture
def ops(server):
    client = client_of(server.port)
    pytest_twisted.blockon(defer.ensureDeferred(client.wait_until_ready()))
    engine = QueueEngine(client)
    yield Operations(engine, ConsumerRegistry(engine, reactor), lambda: "test storage")
    pytest_twisted.blockon(client.disconnect())


@pytest_twisted.ensureDeferred
async def test_one_stats_call_per_tick_serves_every_watcher(ops):
    counted = CountedFeed(ops)
    watchers = [Recorder() for _ in range(3)]
    counted.feed.watch(watchers[0])  # the first watcher starts the ticks, the first one now
    await counted.settle()
    assert watchers[0].kinds() == ["figures"]
    for watcher in watchers[1:]:
        counted.feed.watch(watcher)
        assert watcher.kinds() == ["figures"]  # the latest figures at once, no extra call
    assert counted.reads == 1
    for _ in range(4):
        await counted.tick()
    assert counted.reads == 5  # one per tick, not one per watcher
    for watcher in watchers:
        counted.feed.unwatch(watcher)
    counted.clock.advance(10 * INTERVAL)
    assert counted.reads == 5  # nobody watches: no stats calls at all


@pytest_twisted.ensureDeferred
async def test_figures_are_sent_again_only_when_they_change(ops, queue):
    counted = CountedFeed(ops)
    first, second = Recorder(), Recorder()
    counted.feed.watch(first)
    await counted.settle()
    counted.feed.watch(second)
    for _ in range(3):
        await counted.tick()
    assert first.kinds() == second.kinds() == ["figures"]  # nothing changed, nothing sent
    await ops.add(queue, "one")
    await counted.tick()
    await counted.tick()
    await ops.add_many(queue, ["two", "three"])
    await counted.tick()
    assert first.lengths(queue) == second.lengths(queue) == [0, 1, 3]
    await ops.set_policy(queue, "roundrobin")
    await counted.tick()
    newest = second.calls[-1][1]
    assert [row.stats.policy for row in newest.queues if row.stats.name == queue] == ["roundrobin"]


@pytest_twisted.ensureDeferred
async def test_a_quiet_feed_sends_keep_alives(ops):
    counted = CountedFeed(ops, heartbeat=3 * INTERVAL)
    watcher = Recorder()
    counted.feed.watch(watcher)
    await counted.settle()
    for _ in range(6):
        await counted.tick()
    assert watcher.kinds() == ["figures", "heartbeat", "heartbeat"]


@pytest_twisted.ensureDeferred
async def test_stop_ends_every_watch_and_every_later_one(ops):
    counted = CountedFeed(ops)
    watchers = [Recorder(), Recorder()]
    for watcher in watchers:
        counted.feed.watch(watcher)
    await counted.settle()
    counted.feed.stop()
    for watcher in watchers:
        assert watcher.calls[-1] == ("end", "the broker is stopping")
    late = Recorder()
    counted.feed.watch(late)
    assert late.calls == [("end", "the broker is stopping")]
    reads = counted.reads
    counted.clock.advance(10 * INTERVAL)
    assert counted.reads == reads
    assert counted.feed.watchers == 0


@pytest_twisted.ensureDeferred
async def test_a_storage_outage_is_told_once_and_the_figures_follow_it(valkey_factory, queue):
    server = valkey_factory()
    client = client_of(server.port, call_timeout=0.3)
    await client.wait_until_ready()
    engine = QueueEngine(client)
    ops = Operations(engine, ConsumerRegistry(engine, reactor), lambda: "test storage")
    try:
        await ops.add(queue, "kept")
        counted = CountedFeed(ops)
        watcher = Recorder()
        counted.feed.watch(watcher)
        await counted.settle()
        server.stop()
        for _ in range(4):
            await counted.tick()
        assert watcher.kinds() == ["figures", "unavailable"]
        late = Recorder()
        counted.feed.watch(late)
        assert late.kinds() == ["unavailable"]  # told at once, too
        server.start()  # same port, same data (append-only file)
        await until(lambda: client.connected, timeout=15)
        for _ in range(2):
            await counted.tick()
        assert watcher.kinds() == ["figures", "unavailable", "figures"]
        assert watcher.lengths(queue) == [1, 1]
        assert late.kinds() == ["unavailable", "figures"]
        counted.feed.stop()
    finally:
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_stats_events_add_leased_and_dead_to_the_stats_answer(ops, queue):
    await ops.add_many(queue, ["a", "b", "c"])
    await ops.engine.lease(queue, 60, n=2)
    await ops.add(f"{queue}:dead", "gave up")
    figures = await ops.all_stats()
    event = shapes.stats_event(figures)["queues"]
    assert event[queue] == {
        "name": queue, "len": 1, "status": 1, "policy": 1, "consumers": 0,
        "leased": 2, "dead": 1,
    }  # fmt: skip
    # the dead-letter queue is a queue too; it has none of its own
    assert event[f"{queue}:dead"]["leased"] == 0 and "dead" not in event[f"{queue}:dead"]
    # /stats/ answers the same figures
    assert shapes.all_stats(figures)["queues"][queue]["leased"] == 2


# -- end to end: a real broker, a raw socket -------------------------------------------


class RawEventStream:
    """GET /stats/ with Accept: text/event-stream on a plain socket, parsed by hand."""

    def __init__(self, port: int, headers: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(
            f"GET /stats/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"{headers}\r\n".encode()
        )
        self.buffer = b""
        self.body = b""  # the de-chunked body read so far
        self.closed = False
        head = self._read_until(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise EOFError
        self.buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._recv()
        found, self.buffer = self.buffer.split(marker, 1)
        return found

    def _next_chunk(self) -> bytes:
        size = int(self._read_until(b"\r\n"), 16)
        while len(self.buffer) < size + 2:
            self._recv()
        chunk, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
        return chunk

    def next_event(self) -> dict[str, str]:
        """The next event (comments and the retry field skipped); {} at the body's end."""
        while True:
            while b"\n\n" not in self.body:
                chunk = self._next_chunk()
                if not chunk:
                    return {}  # the last chunk: the answer is complete
                self.body += chunk
            block, self.body = self.body.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
            )
            if "event" in fields:
                return fields

    def stats(self) -> dict:
        event = self.next_event()
        assert event.get("event") == "stats", event
        return json.loads(event["data"])

    def wait_closed(self, timeout: float = 10.0) -> None:
        self.sock.settimeout(timeout)
        while not self.closed:
            try:
                self._recv()
            except (EOFError, ConnectionResetError):
                return

    def close(self) -> None:
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_viewers_that_leave_are_let_go_and_the_ticks_stop(server):
    client = client_of(server.port)
    await client.wait_until_ready()
    engine = QueueEngine(client)
    broker = Broker(client, engine, ConsumerRegistry(engine, reactor))
    listening = reactor.listenTCP(
        0, BrokerApplication(broker, max_body=1024), interface="127.0.0.1"
    )
    port = listening.getHost().port
    feed = broker.operations.stats_feed
    try:
        viewers = [await threads.deferToThread(RawEventStream, port) for _ in range(2)]
        await until(lambda: feed.watchers == 2)
        for viewer in viewers:
            assert (await threads.deferToThread(viewer.stats))["count"] == 0
        viewers[0].close()
        await until(lambda: feed.watchers == 1)
        viewers[1].close()
        await until(lambda: feed.watchers == 0)
    finally:
        await listening.stopListening()
        await client.disconnect()


def test_stats_stream_over_a_raw_socket_follows_posts_and_ends_on_broker_stop(broker_factory):
    broker = broker_factory()
    stream = RawEventStream(broker.port)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=UTF-8"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["transfer-encoding"] == "chunked"
        first = stream.stats()
        assert first["queues"] == {} and first["count"] == 0
        started = time.monotonic()
        broker.post("/q/orders", value="first")
        event = stream.stats()
        assert event["queues"]["orders"] == {
            "name": "orders", "len": 1, "status": 1, "policy": 1, "consumers": 0, "leased": 0,
        }  # fmt: skip
        assert time.monotonic() - started < 2.0  # pushed within a tick or two
        broker.post("/q/orders", value="second")
        broker.post("/control/orders", status="stop")
        while (event := stream.stats())["queues"]["orders"]["status"] != 0:
            pass  # the two changes may come in one event or in two
        assert event["queues"]["orders"]["len"] == 2
        # the plain answer is still the original's JSON
        assert broker.get("/stats/").json()["queues"]["orders"]["len"] == 2
        assert broker.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # twistd may re-raise it
        assert "RestMQ stopped" in broker.log()
        assert stream.next_event() == {"event": "end", "data": "null"}
        assert stream.next_event() == {}  # the chunked answer is complete
        stream.wait_closed()
    finally:
        stream.close()
