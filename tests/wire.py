"""Raw HTTP over a socket, for tests that must see the exact bytes on the wire.

http.client hides what these tests check: pipelining, HTTP/1.0, bodies that are
not UTF-8, answers sent before a request body, connection closes.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


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
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


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
    """Parses responses, one after another, from one connection."""

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
        for line in lines[1:]:
            name, _, value = line.partition(":")
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
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

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
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}"
    if body or method in ("POST", "PUT", "PATCH"):
        head += "Content-Type: application/x-www-form-urlencoded\r\n"
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body
