"""``--workers N``: one port served by N `twistd restmq` processes sharing one Redis.

Real brokers; which process holds a connection is read from the operating system
(psutil), and /health names the process that answered. The main process deals the
connections in turn to the processes that serve: a connection meant for one process
is made again until that process holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl

import psutil
import pytest

from restmq.runtime.options import Options
from tests.support import (
    STORAGE_MODES,
    Broker,
    HttpStream,
    consumers_of,
    pid_alive,
    post_value,
    request,
    self_signed,
    storage_args,
    valkey_pids,
    wait_for,
    wait_healthy,
)


def _workers(broker: Broker) -> list[psutil.Process]:
    children = psutil.Process(broker.proc.pid).children()
    return [p for p in children if "--worker-fd" in p.cmdline()]


def _live_pids(broker: Broker) -> set[int]:
    return {broker.proc.pid, *(p.pid for p in _workers(broker))}


def _health_pid(broker: Broker) -> int:
    """The pid /health names, over a fresh connection."""
    return broker.get("/health").json()["pid"]


def _wait_serving(
    broker: Broker, count: int, timeout: float = 30.0, answering=_health_pid
) -> set[int]:
    """Wait until ``count`` processes serve the broker's port, each seen to answer
    (``answering`` names the pid that answered, over a fresh connection); their pids."""

    def listening() -> set[int] | None:
        log = broker.log()
        pids = {
            pid
            for pid in _live_pids(broker)
            if f"worker {pid} serving the broker's port" in log
            or (pid == broker.proc.pid and "RestMQ listening on" in log)
        }
        return pids if len(pids) >= count else None

    pids = wait_for(listening, timeout, interval=0.1, what=f"{count} processes listening")
    answered: set[int] = set()

    def all_answered() -> bool:
        answered.add(answering(broker))
        return answered >= pids

    wait_for(all_answered, timeout, interval=0, what=f"an answer from each of {sorted(pids)}")
    assert answered == pids, "only the processes listening answer"
    return pids


def _holder(broker: Broker, client: socket.socket) -> int | None:
    """The pid of the broker process that accepted ``client``'s connection."""
    local = client.getsockname()[:2]
    for pid in _live_pids(broker):
        try:
            connections = psutil.Process(pid).net_connections("tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.raddr and (c.raddr.ip, c.raddr.port) == local for c in connections):
            return pid
    return None


def _held_by(broker: Broker, pid: int, connect):
    """``connect()`` again until process ``pid`` holds the connection (the main
    process deals it); the connection's socket is ``connection.sock``."""

    def attempt():
        connection = connect()
        holder = wait_for(lambda: _holder(broker, connection.sock), 5, what="a process to accept")
        if holder == pid:
            return connection
        connection.close()
        return None

    return wait_for(attempt, 30, interval=0, what=f"a connection held by {pid}")


def _connection_to(broker: Broker, pid: int) -> http.client.HTTPConnection:
    """A keep-alive connection that process ``pid`` accepted."""

    def connect() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=10)
        conn.connect()
        return conn

    return _held_by(broker, pid, connect)


class _HeldStream:
    """An HttpStream seen as a connection (``sock``, ``close``), for ``_held_by``."""

    def __init__(self, stream: HttpStream) -> None:
        self.stream = stream
        self.sock = stream.conn.sock

    def close(self) -> None:
        # not started: no reader thread to wait for (HttpStream.close would, 5 s)
        self.sock.shutdown(socket.SHUT_RDWR)
        self.stream.conn.close()


def _stream_held_by(broker: Broker, queue: str, pid: int) -> HttpStream:
    held = _held_by(broker, pid, lambda: _HeldStream(HttpStream(broker.port, queue, sse=True)))
    return held.stream.start()


def _gone(pids) -> bool:
    return not any(pid_alive(pid) for pid in pids)


@pytest.fixture
def workers_broker(broker_factory, storage, request):
    """A broker of 2 processes, on the embedded Valkey or (for the tests marked
    STORAGE_MODES) on the session Valkey Cluster."""
    broker = broker_factory(*storage_args(storage, request), "--workers", "2")
    _wait_serving(broker, 2)
    return broker


@STORAGE_MODES
def test_two_processes_serve_one_port_and_one_queue(workers_broker, queue):
    broker = workers_broker
    main = broker.proc.pid
    (worker,) = (p.pid for p in _workers(broker))
    # both accept on the one port: each answers while the other is paused
    for pid in (main, worker):
        conn = _connection_to(broker, pid)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["pid"] == pid
        conn.close()
    # one queue: a stream held by the worker gets what is posted through the main process
    stream = _stream_held_by(broker, queue, worker)
    try:
        conn = _connection_to(broker, main)
        conn.request(
            "POST",
            f"/q/{queue}",
            body="value=hello",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert conn.getresponse().status == 200
        conn.close()
        message = stream.next_message()
        assert (message["key"], message["value"]) == (broker.key(queue, 1), "hello")
        # and the other way round: a pop through the worker takes what the main stored
        post_value(broker, queue + "-pop", "popped")
        conn = _connection_to(broker, worker)
        conn.request("GET", f"/q/{queue}-pop")
        popped = json.loads(conn.getresponse().read())
        assert (popped["key"], popped["value"]) == (broker.key(f"{queue}-pop", 1), "popped")
        conn.close()
    finally:
        stream.close()


def test_a_burst_of_keep_alive_connections_spreads_over_the_processes(workers_broker, queue):
    broker = workers_broker
    post_value(broker, queue, "x")
    request = f"GET /stats/{queue} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    async def pool_at_once() -> list:
        # a client's connection pool: opened together, each busy with requests at once
        pool = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", broker.port) for _ in range(16))
        )

        async def use(reader, writer) -> None:
            for _ in range(20):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head)[1])
                await reader.readexactly(length)

        try:
            await asyncio.gather(*(use(reader, writer) for reader, writer in pool))
            return [_holder(broker, writer.get_extra_info("socket")) for _, writer in pool]
        finally:
            for _, writer in pool:
                writer.close()

    held = asyncio.run(pool_at_once())
    counts = {pid: held.count(pid) for pid in _live_pids(broker)}
    assert sorted(counts.values()) == [8, 8], counts  # dealt in turn: an exact split


def test_connections_opened_at_the_first_answer_spread_over_the_processes(broker_factory):
    """A load balancer's checks, a client pool reconnecting after a restart: they come
    as soon as the broker answers, and keep-alive keeps them where they land."""
    broker = broker_factory("--workers", "2", wait=False)
    wait_healthy(broker, timeout=30)  # the first answer, from whichever process
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def burst() -> list[int]:
        pool = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", broker.port) for _ in range(50))
        )

        async def answering(reader, writer) -> int:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])
            return json.loads(await reader.readexactly(length))["pid"]

        try:  # every connection stays open until each has its answer
            return await asyncio.gather(*(answering(reader, writer) for reader, writer in pool))
        finally:
            for _, writer in pool:
                writer.close()

    answered = asyncio.run(asyncio.wait_for(burst(), 30))
    counts = {pid: answered.count(pid) for pid in _live_pids(broker)}
    assert sorted(counts.values()) == [25, 25], counts  # dealt in turn: an exact split
    # the main process took its first connection only once the worker served
    log = broker.log()
    assert log.index("serving the broker's port") < log.index("RestMQ listening on")


@STORAGE_MODES
def test_stats_count_the_consumers_of_every_process(workers_broker, queue):
    broker = workers_broker
    main = broker.proc.pid
    (worker,) = (p.pid for p in _workers(broker))
    post_value(broker, queue, "listed")
    streams = [_stream_held_by(broker, queue, pid) for pid in (main, worker, worker)]
    try:
        # whichever process answers, it counts all three
        for pid in (main, worker):
            conn = _connection_to(broker, pid)
            wait_for(lambda c=conn: _consumers_on(c, queue) == 3, 5, what="3 consumers")
            conn.request("GET", "/stats/")
            listing = json.loads(conn.getresponse().read())
            assert listing["queues"][queue]["consumers"] == 3
            conn.close()
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: consumers_of(broker, queue) == 0, 5, what="no consumer left")


def _consumers_on(conn: http.client.HTTPConnection, queue: str) -> int:
    conn.request("GET", f"/stats/{queue}")
    return json.loads(conn.getresponse().read())["consumers"]


def test_an_acl_conf_change_reaches_every_process(broker_factory, tmp_path):
    workdir = tmp_path / "broker"
    workdir.mkdir()
    acl = workdir / "acl.conf"  # found in the working directory, by every process
    acl.write_text("# every route open\n")
    broker = broker_factory("--workers", "2", workdir=workdir)
    pids = _wait_serving(broker, 2)
    acl.write_text("[rest:consumer]\nhosts_deny = all\n")
    for pid in pids:
        conn = _connection_to(broker, pid)
        wait_for(lambda c=conn: _status(c, "/stats/") == 403, 15, what=f"{pid} to reload")
        conn.close()


def _status(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def test_a_killed_worker_is_started_again_and_sigterm_stops_all(workers_broker):
    broker = workers_broker
    (worker,) = _workers(broker)
    valkeys = valkey_pids(broker.data_dir)
    worker.kill()
    wait_for(lambda: _gone([worker.pid]), 10, what="the worker to die")
    wait_for(
        lambda: [p.pid for p in _workers(broker)] not in ([], [worker.pid]),
        15,
        what="a new worker",
    )
    (again,) = _workers(broker)
    assert again.pid in _wait_serving(broker, 2)
    assert f"worker 1 (pid {worker.pid}) ended (signal 9); starting it again" in broker.log()
    everything = [broker.proc.pid, again.pid, *valkeys]
    assert broker.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    wait_for(lambda: _gone(everything), 20, what="every process to stop")
    worker_lines = [line for line in broker.log().splitlines() if f"worker {again.pid}:" in line]
    assert any("RestMQ stopped" in line for line in worker_lines), "it did its own stop"


def test_connections_dealt_to_a_killed_worker_are_served_by_the_main_process(
    workers_broker,
):
    broker = workers_broker
    main = broker.proc.pid
    (worker,) = _workers(broker)
    os.kill(worker.pid, signal.SIGSTOP)
    wait_for(lambda: worker.status() == psutil.STATUS_STOPPED, 5, what="the worker to pause")
    clients = [socket.create_connection(("127.0.0.1", broker.port), timeout=15) for _ in range(20)]
    for client in clients:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    # every one accepted, none left in the listening socket's backlog: half held by
    # the main process, half dealt to the paused worker, which has not taken them
    # (no process holds them yet)
    def dealt() -> list | None:
        holders = [_holder(broker, client) for client in clients]
        return holders if holders.count(main) == 10 and _queued(broker.port) == 0 else None

    holders = wait_for(dealt, 10, what="the connections to be dealt")
    assert sorted(holders, key=str) == [main] * 10 + [None] * 10, holders
    worker.kill()
    try:
        assert [_answering_pid(client) for client in clients] == [main] * len(clients)
    finally:
        for client in clients:
            client.close()
    assert "dealing worker 1's share to the others until it is back (10 connection" in broker.log()
    # the worker started again is dealt to again; only the main process listens
    (again,) = _wait_serving(broker, 2) - {main}
    assert _listening(main, broker.port) == 1
    assert _listening(again, broker.port) == 0


def test_a_killed_workers_share_goes_to_the_main_process_and_none_is_refused(workers_broker):
    broker = workers_broker
    main = broker.proc.pid
    (worker,) = _workers(broker)
    serving_lines = broker.log().count(workers_serving := "serving the broker's port")
    worker.kill()
    # the main process deals to the worker started again only once it says it serves
    # (and relays that line to the log at once): until then, each answer is its own
    answers = []
    for _ in range(10):
        rejoined = broker.log().count(workers_serving) > serving_lines
        answers.append((_health_pid(broker), rejoined))  # a refusal would raise here
    assert all(pid == main for pid, rejoined in answers if not rejoined), answers
    (again,) = _wait_serving(broker, 2) - {main}
    assert again != worker.pid


def _listening_rows(port: int) -> list[list[str]]:
    """The kernel's rows (/proc/net/tcp) of the sockets listening on ``port``."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    rows.append(fields)
    return rows


def _queued(port: int) -> int:
    """Connections waiting in the accept queues of the sockets listening on ``port``."""
    return sum(int(fields[4].split(":")[1], 16) for fields in _listening_rows(port))


def _answering_pid(client: socket.socket) -> int:
    response = http.client.HTTPResponse(client)
    response.begin()
    return json.loads(response.read())["pid"]


def _listening(pid: int, port: int) -> int:
    """How many of process ``pid``'s descriptors are sockets listening on ``port``
    (two descriptors of one socket count twice)."""
    sockets = {f"socket:[{fields[9]}]" for fields in _listening_rows(port)}
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            held += os.readlink(f"/proc/{pid}/fd/{fd}") in sockets
    return held


def test_sigkill_of_the_main_process_leaves_nothing_behind(workers_broker):
    broker = workers_broker
    everything = [p.pid for p in _workers(broker)] + valkey_pids(broker.data_dir)
    assert len(everything) == 2
    broker.stop(signal.SIGKILL)
    wait_for(lambda: _gone(everything), 20, what="the worker and valkey-server to go")


def test_brokers_sharing_a_redis_add_up_consumers_and_a_dead_one_drops_out(
    broker_factory, valkey_factory, queue
):
    server = valkey_factory()
    storage = ("--redis-host", "127.0.0.1", "--redis-port", str(server.port))
    first = broker_factory(*storage, "--workers", "2")
    second = broker_factory(*storage)
    _wait_serving(first, 2)
    post_value(first, queue, "listed")
    streams = [HttpStream(first.port, queue, sse=True).start() for _ in range(3)]
    streams += [HttpStream(second.port, queue, sse=True).start() for _ in range(2)]
    try:
        for broker in (first, second):
            wait_for(lambda b=broker: consumers_of(b, queue) == 5, 5, what="5 consumers")
        second.stop(signal.SIGKILL)
        wait_for(lambda: consumers_of(first, queue) == 3, 6, what="the dead broker's drop")
    finally:
        for stream in streams:
            stream.close()


def test_a_port_in_use_fails_the_start_before_any_worker(broker_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = broker_factory("--workers", "2", port=port, wait=False)
        assert broker.proc.wait(30) != 0
    log = broker.log()
    assert "RestMQ could not start" in log and "Address already in use" in log, log
    assert "started worker" not in log


def test_ipv6_is_served_by_every_worker(broker_factory):
    broker = broker_factory("--workers", "2", "--listen", "::1", wait=False)

    def answering_over_ipv6(broker: Broker) -> int:
        return request(broker.port, "GET", "/health", host="::1").json()["pid"]

    assert _wait_serving(broker, 2, answering=answering_over_ipv6) == _live_pids(broker)


def test_tls_is_served_by_every_worker(broker_factory, tmp_path):
    cert, key = self_signed(tmp_path)
    broker = broker_factory("--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key),
                            wait=False)  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))

    def answering_over_tls(broker: Broker) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", broker.port, context=context)
        try:
            conn.request("GET", "/health")
            return json.loads(conn.getresponse().read())["pid"]
        finally:
            conn.close()

    assert _wait_serving(broker, 2, answering=answering_over_tls) == _live_pids(broker)


def test_workers_option():
    def parsed(*args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    assert parsed()["workers"] == 1
    assert parsed("--workers", "3")["workers"] == 3
    assert parsed("--workers", "auto")["workers"] == (psutil.cpu_count() or 1)
    assert parsed("--workers", "4", "--worker-fd", "5")["workers"] == 1, "no nested workers"
    for wrong in ("0", "-1", "many"):
        with pytest.raises(Exception, match="--workers"):
            parsed("--workers", wrong)
    usage = Options().getUsage()
    assert "--workers" in usage and "worker-fd" not in usage
