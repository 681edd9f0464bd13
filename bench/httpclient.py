"""A minimal HTTP/1.1 client on asyncio streams: keep-alive requests, raw bytes out.

Only what the benchmarks need: a request is encoded once and sent many times;
answers are read by Content-Length, chunked framing, or until the server closes.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

_NO_BODY_STATUSES = (204, 304)


class HttpError(Exception):
    """The server answered something the benchmark cannot read."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def encode_request(
    method: str,
    path: str,
    *,
    port: int,
    body: bytes = b"",
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one HTTP/1.1 request, ready to be written again and again."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def form_body(**fields: str) -> bytes:
    return urllib.parse.urlencode(fields).encode("ascii")


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of the next answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    status, headers = await read_head(reader)
    if status in _NO_BODY_STATUSES or status < 200 or method == "HEAD":
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()  # delimited by the server closing
        headers["connection"] = "close"
    return Response(status, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are expected
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class ChunkedDecoder:
    """Undoes chunked framing of a stream that arrives in arbitrary pieces."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data_left = 0  # bytes of the current chunk still to come
        self._crlf_left = 0  # bytes of the CRLF after the current chunk still to come
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = []
        while self._buffer and not self.finished:
            if self._crlf_left:
                skip = min(self._crlf_left, len(self._buffer))
                self._buffer = self._buffer[skip:]
                self._crlf_left -= skip
                continue
            if self._data_left:
                piece = self._buffer[: self._data_left]
                self._buffer = self._buffer[len(piece) :]
                self._data_left -= len(piece)
                if not self._data_left:
                    self._crlf_left = 2
                out.append(piece)
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(self._buffer[:end].split(b";", 1)[0].strip() or b"0", 16)
            self._buffer = self._buffer[end + 2 :]
            if size == 0:
                self.finished = True
            self._data_left = size
        return b"".join(out)


class HttpConnection:
    """One keep-alive connection to a server on loopback; reopened when the server closes it."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConnection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, raw: bytes, method: str = "GET") -> Response:
        if self.writer is None:
            await self.open()
        try:
            self.writer.write(raw)
            response = await read_response(self.reader, method)
        except BaseException:
            self.close()
            raise
        if not response.keep_alive:
            self.close()
        return response

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
