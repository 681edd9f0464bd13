"""One test per cyclone-on-Python-3 defect we work around (restmq/web/connection/
cyclone_fixes.py and cyclone_fixes_connection.py), and a check that only those
modules touch cyclone's private state.

Each test shows, over real sockets, that the defect listed in docs/cyclone.md is
handled; its name says the symptom. Most talk to a real `twistd restmq`; the
streaming pieces are driven through a tiny cyclone app built from the same parts
and run in this process.
"""

from __future__ import annotations

import gc
import json
import re
import socket
import time
from pathlib import Path

import cyclone.web
import pytest
import pytest_twisted
import twisted.protocols.basic
from twisted.internet import reactor, task, threads

from restmq.delivery.consumers import ConsumerRegistry
from restmq.engine.queues import QueueEngine
from restmq.runtime.service import Broker
from restmq.web.app import BrokerApplication
from restmq.web.connection.cyclone_fixes import FixedChunked, stream_without_keep_alive
from restmq.web.connection.http_policy import BrokerHTTPConnection
from restmq.web.handlers.base import BaseHandler
from tests import support as wire
from tests.support import JSON_TYPE, ROOT, assert_error


def form(method: str, path: str, body: str = "", extra: str = "") -> bytes:
    return wire.form_request(method, path, body.encode(), extra)


# -- keep-alive pipelining --------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(shared_broker, queue):
    requests = (
        form("POST", f"/q/{queue}", "value=a")  # async: waits for Redis
        + form("POST", f"/q/{queue}", "value=b")
        + form("GET", f"/q/{queue}")
        + form("GET", f"/q/{queue}?n=5")
        + form("GET", f"/q/{queue}")
        + form("GET", f"/stats/{queue}")
    )
    with wire.connect(shared_broker.port) as sock:
        sock.sendall(requests)  # one TCP write
        reader = wire.Reader(sock)
        answers = [reader.read_response(m) for m in ("POST", "POST", "GET", "GET", "GET", "GET")]
        assert [a.status for a in answers] == [200, 200, 200, 200, 204, 200]
        assert answers[0].body == f"{queue}:1\r\n".encode()
        assert answers[1].body == f"{queue}:2\r\n".encode()
        assert json.loads(answers[2].body)["value"] == "a"
        assert [m["value"] for m in json.loads(answers[3].body)] == ["b"]
        assert json.loads(answers[5].body)["len"] == 0
        # the connection is still good for more
        sock.sendall(form("GET", f"/p/{queue}"))
        assert json.loads(reader.read_response().body)["value"] == "broadcast"


# -- "+" in paths ---------------------------------------------------------------------


def test_plus_in_a_path_stays_a_plus(shared_broker):
    b = shared_broker
    for path in ("/q/a+b", "/stats/a+b", "/p/a+b", "/j/a+b", "/control/a+b"):
        error = assert_error(b.get(path), 400, "invalid queue name")
        assert "'a+b'" in error, (path, error)  # cyclone alone would have read "a b"
    error = assert_error(b.post("/q/x+y", value="v"), 400)
    assert "'x+y'" in error
    # percent escapes are still decoded
    assert b.post("/q/mail%40example.com", value="v").text == "mail@example.com:1\r\n"
    assert b.get("/q/mail@example.com").json()["key"] == "mail@example.com:1"


# -- If-Modified-Since on static files -------------------------------------------------


def test_unparseable_if_modified_since_on_a_static_file_is_200(shared_broker):
    b = shared_broker
    page = b.get("/static/index.html")
    for value in ("garbage", "yesterday", "Mon, 99 Foo 2020 99:99:99 GMT", ""):
        response = b.get("/static/index.html", headers={"If-Modified-Since": value})
        assert response.status == 200, value
        assert response.body == page.body
    # a real date still works
    response = b.get(
        "/static/index.html", headers={"If-Modified-Since": page.headers["last-modified"]}
    )
    assert response.status == 304
    # and a ?v= URL gets no malformed Expires header
    response = b.get("/static/restmq.css?v=123")
    assert response.status == 200
    assert "expires" not in response.headers


# -- 204 answers -------------------------------------------------------------------------


def test_a_204_goes_out_without_content_length_or_chunk_framing(shared_broker, queue):
    # cyclone adds "Content-Length: 0" to a 204, which HTTP forbids
    with wire.connect(shared_broker.port) as sock:
        sock.sendall(form("GET", f"/q/{queue}") + form("GET", f"/stats/{queue}"))
        reader = wire.Reader(sock)
        empty = reader.read_response()
        assert empty.status == 204
        assert "content-length" not in empty.headers
        assert "transfer-encoding" not in empty.headers
        # nothing stray follows the head: the next answer parses cleanly
        assert json.loads(reader.read_response().body)["queue"] == queue


# -- async def handlers ---------------------------------------------------------------


def test_async_def_handlers_run_and_their_errors_after_await_are_answered(shared_broker, queue):
    b = shared_broker
    started = time.monotonic()
    assert b.post(f"/q/{queue}", value="awaited").text == f"{queue}:1\r\n"
    assert b.get(f"/q/{queue}").json()["value"] == "awaited"  # the body came after an await
    # an error raised after an await still becomes its answer
    assert_error(b.get(f"/?queue={queue}"), 404, f"queue '{queue}' is empty")
    assert time.monotonic() - started < 10
    assert "was never awaited" not in b.log()


# -- write_error ------------------------------------------------------------------------


def test_errors_are_json_not_cyclone_html(shared_broker, queue):
    b = shared_broker
    responses = {
        400: b.get(f"/q/{queue}?n=0"),
        404: b.get("/no/such/route"),
        405: b.request("PUT", f"/q/{queue}", body=b"x"),
    }
    # foreign data in Redis: the list key holds a string, so the pop script fails
    broken = queue + "broken"
    b.redis("SET", f"{broken}:queue", "not a list")
    responses[409] = b.get(f"/q/{broken}")
    for status, response in responses.items():
        assert response.status == status
        assert response.headers["content-type"] == JSON_TYPE
        assert b"<html>" not in response.body
        assert list(response.json()) == ["error"]
    assert "another kind of value" in responses[409].json()["error"]
    assert "WRONGTYPE" not in responses[409].text and "Traceback" not in responses[409].text
    assert "Traceback" not in b.log()


# -- chunked request bodies -----------------------------------------------------------


def test_chunked_request_body_gets_411(shared_broker, queue):
    request = (
        f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        "7\r\nvalue=a\r\n0\r\n\r\n"
    ).encode()
    [answer] = wire.exchange(shared_broker.port, request, methods=["POST"])
    assert answer.status == 411
    assert answer.headers["content-type"] == JSON_TYPE
    assert json.loads(answer.body)["error"].startswith("chunked request bodies are not supported")
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0


# -- bytes that are not UTF-8 ------------------------------------------------------------


def test_non_utf8_form_body_gets_400(shared_broker, queue):
    port = shared_broker.port
    raw_body = wire.form_request("POST", f"/q/{queue}", b"value=caf\xe9")
    [answer] = wire.exchange(port, raw_body, methods=["POST"])
    assert answer.status == 400
    assert json.loads(answer.body) == {"error": "the form body is not valid UTF-8"}
    escaped = wire.form_request("POST", f"/q/{queue}", b"value=caf%E9")
    [answer] = wire.exchange(port, escaped, methods=["POST"])
    assert answer.status == 400
    assert json.loads(answer.body) == {"error": "argument 'value' is not valid UTF-8"}
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0


def test_non_utf8_or_malformed_heads_get_400(shared_broker):
    port = shared_broker.port
    cases = {
        b"GET /stats/x HTTP/1.1\r\nHost: t\r\nX-Name: caf\xe9\r\n\r\n": (
            "the request headers are not valid UTF-8"
        ),
        b"GET /stats/caf\xe9 HTTP/1.1\r\nHost: t\r\n\r\n": "the request line is not valid UTF-8",
        b"HELLO\r\n\r\n": "malformed HTTP request line",
        b"GET /stats/x HTTP/1.1 extra\r\n\r\n": "malformed HTTP request line",
        b"GET /stats/x FTP/1.0\r\n\r\n": "malformed HTTP request line",
        b"POST /q/x HTTP/1.1\r\nContent-Length: ten\r\n\r\n": (
            "Content-Length must be a whole number"
        ),
    }
    for request, error in cases.items():
        [answer] = wire.exchange(port, request)
        assert answer.status == 400, request
        assert json.loads(answer.body) == {"error": error}
        assert answer.headers["connection"] == "close"
    assert shared_broker.get("/stats/").status == 200


def test_nothing_pipelined_after_a_refused_request_is_served(shared_broker, queue):
    b = shared_broker
    b.post(f"/q/{queue}", value="keep")
    for refused in (b"HELLO\r\n\r\n", b"POST /q/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"):
        with wire.connect(b.port) as sock:
            sock.sendall(refused + form("GET", f"/q/{queue}"))
            reader = wire.Reader(sock)
            assert reader.read_response().status in (400, 411)
            assert reader.closed()
    assert b.get(f"/q/{queue}").json()["value"] == "keep"


def test_empty_lines_before_a_request_are_ignored(shared_broker, queue):
    [answer] = wire.exchange(shared_broker.port, b"\r\n\r\n" + form("GET", f"/stats/{queue}"))
    assert answer.status == 200
    assert json.loads(answer.body)["queue"] == queue


# -- HTTP/1.0 clients ---------------------------------------------------------------------


def test_http10_requests_work(shared_broker, queue):
    port = shared_broker.port
    post = (
        f"POST /q/{queue} HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 7\r\n\r\nvalue=x"
    ).encode()
    with wire.connect(port) as sock:
        sock.sendall(post)
        reply = wire.read_until_closed(sock)  # HTTP/1.0: the server closes
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
    assert reply.endswith(b"\r\n\r\n" + f"{queue}:1\r\n".encode())

    with wire.connect(port) as sock:
        sock.sendall(f"GET /q/{queue} HTTP/1.0\r\n\r\n".encode())
        reply = wire.read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
    assert reply.endswith(
        b'{"key": "' + f"{queue}:1".encode() + b'", "value": "x", "count": 0}\r\n'
    )

    # an empty queue: 204, and the HTTP/1.0 connection still ends cleanly
    with wire.connect(port) as sock:
        sock.sendall(f"GET /q/{queue} HTTP/1.0\r\n\r\n".encode())
        reply = wire.read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.0 204 No Content\r\n")
    assert reply.endswith(b"\r\n\r\n")

    # HTTP/1.0 keep-alive: two requests on one connection
    keep = f"GET /stats/{queue} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".encode()
    with wire.connect(port) as sock:
        reader = wire.Reader(sock)
        for _ in range(2):
            sock.sendall(keep)
            answer = reader.read_response()
            assert (answer.version, answer.status) == ("HTTP/1.0", 200)
            assert json.loads(answer.body)["queue"] == queue


# -- the streaming parts, in process: chunked output, HTTP/1.0 streams, disconnects,
# -- and the header/idle timeout -----------------------------------------------------------


class StreamHandler(BaseHandler):
    """A minimal long-lived answer, built like the broker's streaming routes."""

    streams: list[StreamHandler] = []
    gone: list[StreamHandler] = []

    @cyclone.web.asynchronous
    def get(self) -> None:
        stream_without_keep_alive(self)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.write("first\r\n")
        self.flush()
        StreamHandler.streams.append(self)

    def on_client_gone(self) -> None:
        StreamHandler.gone.append(self)


class StreamApp(cyclone.web.Application):
    protocol = BrokerHTTPConnection
    noisy = False

    def __init__(self, header_timeout: float = 30.0) -> None:
        super().__init__(
            [(r"/stream", StreamHandler)],
            transforms=[FixedChunked],
            max_body=1024,
            header_timeout=header_timeout,
        )


def listen(app) -> tuple[object, int]:
    StreamHandler.streams.clear()
    StreamHandler.gone.clear()
    listening = reactor.listenTCP(0, app, interface="127.0.0.1")
    return listening, listening.getHost().port


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def blocking(fn, *args):
    return threads.deferToThread(fn, *args)


@pytest_twisted.ensureDeferred
async def test_streamed_answers_are_valid_chunked_encoding():
    listening, port = listen(StreamApp())
    try:
        sock = await blocking(wire.connect, port)
        reader = wire.Reader(sock)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        version, status, headers, _ = await blocking(reader.read_head)
        assert (version, status, headers["transfer-encoding"]) == ("HTTP/1.1", 200, "chunked")
        assert "content-length" not in headers
        # the first part arrives while the answer is still open: one chunk, framed in bytes
        assert await blocking(reader.read_line) == b"7"
        assert await blocking(reader.read_exactly, 9) == b"first\r\n\r\n"
        await until(lambda: StreamHandler.streams, what="the handler")
        handler = StreamHandler.streams[0]
        handler.write("second ☃\r\n")
        handler.flush()
        handler.finish()
        assert await blocking(reader.read_chunked) == "second ☃\r\n".encode()
        # a normal end is not a disconnect
        assert StreamHandler.gone == []
        # the connection stays usable after the terminating chunk
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await blocking(reader.read_head))[1] == 200
        assert await blocking(reader.read_line) == b"7"
        sock.close()
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_is_noticed_once():
    listening, port = listen(StreamApp())
    try:
        sock = await blocking(wire.connect, port)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await blocking(wire.Reader(sock).read_head)
        await until(lambda: StreamHandler.streams, what="the handler")
        sock.close()
        await until(lambda: StreamHandler.gone, what="the disconnect to be noticed")
        await task.deferLater(reactor, 0.2, lambda: None)
        assert StreamHandler.gone == StreamHandler.streams  # exactly once, for that handler
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_http10_keep_alive_stream_ends_by_closing():
    listening, port = listen(StreamApp())
    try:
        sock = await blocking(wire.connect, port)
        sock.sendall(b"GET /stream HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        reader = wire.Reader(sock)
        version, status, headers, _ = await blocking(reader.read_head)
        assert (version, status) == ("HTTP/1.0", 200)
        assert "transfer-encoding" not in headers and "content-length" not in headers
        assert headers.get("connection", "").lower() != "keep-alive"
        await until(lambda: StreamHandler.streams, what="the handler")
        StreamHandler.streams[0].write("second\r\n")
        StreamHandler.streams[0].finish()
        rest = await blocking(wire.read_until_closed, sock)
        assert reader.buffer + rest == b"first\r\nsecond\r\n"  # closing marks the end
        sock.close()
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_slow_headers_and_idle_connections_are_dropped():
    listening, port = listen(StreamApp(header_timeout=0.5))
    try:
        slow = await blocking(wire.connect, port)
        slow.sendall(b"GET /stream HTTP/1.1\r\nHo")  # and then nothing
        assert await blocking(wire.read_until_closed, slow, 10) == b""
        slow.close()

        idle = await blocking(wire.connect, port)
        idle.sendall(b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = wire.Reader(idle)
        assert (await blocking(reader.read_response)).status == 404
        started = time.monotonic()
        assert await blocking(reader.closed, 10)  # idle keep-alive: closed by the server
        assert time.monotonic() - started < 5
        idle.close()
    finally:
        await listening.stopListening()


def test_the_broker_survives_a_client_vanishing_mid_request(shared_broker, queue):
    with socket.create_connection(("127.0.0.1", shared_broker.port)) as sock:
        sock.sendall(
            f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\nvalue=part".encode()
        )
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0
    assert shared_broker.post(f"/q/{queue}", value="whole").status == 200


# -- reference cycles -----------------------------------------------------------------


def _handlers_alive() -> int:
    """Request handlers that still exist: freed ones are gone, those in a cycle are not."""
    return sum(isinstance(o, cyclone.web.RequestHandler) for o in gc.get_objects())


def _serve_some_requests(port: int, queue: str) -> list[int]:
    """A producer's and a consumer's requests, one connection: their statuses."""
    with wire.connect(port) as sock:
        reader = wire.Reader(sock)
        statuses = []
        for method, path, body in (
            ("POST", f"/q/{queue}", "value=a"),
            ("GET", f"/q/{queue}?lease=30", ""),
            ("GET", f"/q/{queue}", ""),  # empty: 204
            ("GET", f"/stats/{queue}", ""),
        ):
            sock.sendall(form(method, path, body))
            answer = reader.read_response(method)
            statuses.append(answer.status)
            if method == "GET" and "lease" in path:
                receipt = json.loads(answer.body)["receipt"]
                sock.sendall(form("DELETE", f"/q/{queue}?receipt={receipt}"))
                statuses.append(reader.read_response("DELETE").status)
    return statuses


@pytest.fixture
def in_process_broker(server, connect_client) -> Broker:
    """The handlers' broker, over a real Valkey, for applications served in this process."""
    client = connect_client(server)
    engine = QueueEngine(client)
    return Broker(client, engine, ConsumerRegistry(engine, reactor))


@pytest_twisted.ensureDeferred
async def test_a_served_request_is_freed_without_the_cycle_collector(in_process_broker):
    """cyclone's per-handler UI-module closures make every handler a reference cycle;
    the broker's application has none, so reference counting frees each request."""
    stock = BrokerApplication(in_process_broker, max_body=1024)
    stock.ui_modules = {"linkify": cyclone.web._linkify}  # cyclone's default, put back
    apps = {"broker": BrokerApplication(in_process_broker, max_body=1024), "stock": stock}
    left: dict[str, int] = {}
    gc.collect()
    gc.disable()
    try:
        for name, app in apps.items():
            listening = reactor.listenTCP(0, app, interface="127.0.0.1")
            try:
                before = _handlers_alive()
                port = listening.getHost().port
                statuses = await blocking(_serve_some_requests, port, f"cycles-{name}")
                assert statuses == [200, 200, 200, 204, 200]
                left[name] = _handlers_alive() - before
            finally:
                await listening.stopListening()
    finally:
        gc.enable()
    assert left["broker"] == 0
    assert left["stock"] == 5  # the defect: each handler waits for a collection


# -- where cyclone's private state is touched ----------------------------------------


def test_only_the_two_cyclone_modules_touch_cyclones_private_state():
    # cyclone's private names (and those of Twisted's LineReceiver, which its HTTP
    # connection is), read from their source: attributes they set, methods they define.
    cyclone_dir = Path(cyclone.web.__file__).parent
    sources = [cyclone_dir / name for name in ("web.py", "httpserver.py", "httputil.py")]
    sources.append(Path(twisted.protocols.basic.__file__))
    private: set[str] = set()
    for source in sources:
        text = source.read_text()
        private |= set(re.findall(r"(?:self|cls)\.(_[a-z]\w*)", text))
        private |= set(re.findall(r"def (_[a-z]\w*)", text))
    touching = []
    for module in sorted((ROOT / "restmq").rglob("*.py")):
        text = module.read_text()
        if module.name.startswith("cyclone_fixes"):
            continue  # cyclone_fixes.py and cyclone_fixes_connection.py: theirs to touch
        if "cyclone" not in text and "web" not in module.parts:
            continue  # no cyclone object passes through it
        for number, line in enumerate(text.splitlines(), 1):
            names = re.findall(r"\.(_[a-z]\w*)\b", line) + re.findall(r"def (_[a-z]\w*)", line)
            touching += [f"{module.relative_to(ROOT)}:{number} {n}" for n in names if n in private]
    assert touching == [], "use (or add) a helper in cyclone_fixes or cyclone_fixes_connection"
