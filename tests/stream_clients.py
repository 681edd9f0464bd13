"""Streaming clients for the tests: COMET and SSE readers (http.client), WebSocket (websockets)."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue as queue_module
import socket
import threading
import time

from websockets.sync.client import connect as ws_connect


class _Reader:
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


class HttpStream(_Reader):
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
            line = self.response.readline()
            if not line:
                return
            self.raw_lines.append(line)
            if not self.sse:
                self.items.put(line)
                continue
            text = line.decode().rstrip("\n")
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


class WebSocketStream(_Reader):
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


class RawSseStream:
    """An SSE consumer on a raw socket that reads only when told to.

    With a small receive buffer, a consumer that does not read soon fills the
    broker's socket buffer: the broker then pauses it and keeps what follows in
    its backlog. ``read_to_end()`` reads everything until the broker closes.
    """

    def __init__(self, port: int, queue: str, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
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

    def read_in_background(self) -> threading.Thread:
        """Read to the end in a thread (join it, then look at ``messages()``)."""
        thread = threading.Thread(target=self.read_to_end, daemon=True)
        thread.start()
        return thread

    def messages(self) -> list[dict]:
        # Each event is written as one chunk, so a data line is never cut by chunk framing.
        return [
            json.loads(line[6:]) for line in self.raw.split(b"\n") if line.startswith(b"data: {")
        ]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
