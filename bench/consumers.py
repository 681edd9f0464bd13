"""Streaming consumers connected the way users connect them.

- ``SseConsumer``: ``GET /c/<q>`` with ``Accept: text/event-stream`` on a raw asyncio
  socket; events ``id: <key>`` / ``data: {"key": ..., "value": ...}``.
- ``CometConsumer``: ``GET /c/<q>``; one ``{"key": ..., "value": ...}\\r\\n`` line per message.
- ``WsConsumer``: ``/ws/<q>`` with the ``websockets`` package; one text frame per message.

Each counts the messages it gets and, while its ``Recorder`` records, the
publish->delivery latency from the ``time.time_ns()`` stamp at the front of each value.
A route that answers 404 raises ``RouteMissing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from bench.httpclient import ChunkedDecoder, encode_request, read_head


class RouteMissing(Exception):
    """The broker has no such route (yet): the scenario is skipped."""


def stamped_value(sequence: int, size: int) -> str:
    """A message value that starts with its publish time: ``<time_ns>:<seq>:xxx...``."""
    head = f"{time.time_ns()}:{sequence}:"
    return head + "x" * max(0, size - len(head))


class Recorder:
    """Latencies (ns) of the deliveries made while ``recording`` is on."""

    def __init__(self) -> None:
        self.recording = False
        self.latencies_ns: list[int] = []
        self.unreadable = 0

    def observe(self, value: str, received_ns: int) -> None:
        if not self.recording:
            return
        try:
            self.latencies_ns.append(received_ns - int(value.split(":", 1)[0]))
        except (ValueError, AttributeError):
            self.unreadable += 1


class Consumer:
    kind = "?"
    route = "?"

    def __init__(self, port: int, queue: str, recorder: Recorder | None = None) -> None:
        self.port = port
        self.queue = queue
        self.recorder = recorder
        self.received = 0
        self.ended = False  # the broker ended the stream
        self.failure: BaseException | None = None
        self._task: asyncio.Task | None = None

    async def connect(self, timeout: float = 15.0) -> None:
        raise NotImplementedError

    async def _read_loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Read messages in the background until closed."""
        self._task = asyncio.create_task(self._guarded_read())

    async def _guarded_read(self) -> None:
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted by the scenario, not fatal for the run
            self.failure = exc
        self.ended = True

    def deliver(self, text: str | bytes) -> None:
        message = json.loads(text)
        if message is None:  # the broker's last word on a purged queue
            self.ended = True
            return
        self.received += 1
        if self.recorder is not None:
            self.recorder.observe(message.get("value"), time.time_ns())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_transport()

    async def _close_transport(self) -> None:
        raise NotImplementedError


class _HttpStreamConsumer(Consumer):
    route = "GET /c/<q>"
    accept: str | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    decoder: ChunkedDecoder | None = None

    async def connect(self, timeout: float = 15.0) -> None:
        async def handshake() -> None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            headers = {"Accept": self.accept} if self.accept else {}
            path = f"/c/{self.queue}"
            self.writer.write(encode_request("GET", path, port=self.port, headers=headers))
            status, head = await read_head(self.reader)
            if status == 404:
                self.writer.close()
                raise RouteMissing(f"{self.route} answered 404")
            if status != 200:
                body = await self.reader.read(300)
                self.writer.close()
                raise RuntimeError(f"{self.kind} consumer got {status}: {body[:200]!r}")
            chunked = "chunked" in head.get("transfer-encoding", "").lower()
            self.decoder = ChunkedDecoder() if chunked else None

        await asyncio.wait_for(handshake(), timeout)

    async def _read_loop(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            if self.decoder is not None:
                data = self.decoder.feed(data)
            self.feed(data)
            if self.ended or (self.decoder is not None and self.decoder.finished):
                return

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    async def _close_transport(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


class SseConsumer(_HttpStreamConsumer):
    kind = "sse"
    accept = "text/event-stream"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *events, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            data_lines = []
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].removeprefix(b" "))
                elif line == b"event: end":
                    self.ended = True
            if data_lines:
                self.deliver(b"\n".join(data_lines))


class CometConsumer(_HttpStreamConsumer):
    kind = "comet"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\r\n")
        for line in lines:
            if line.strip():
                self.deliver(line)


class WsConsumer(Consumer):
    kind = "ws"
    route = "/ws/<q>"

    async def connect(self, timeout: float = 15.0) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        uri = f"ws://127.0.0.1:{self.port}/ws/{self.queue}"
        try:
            self.ws = await connect(
                uri, compression=None, max_size=None, ping_interval=None, open_timeout=timeout
            )
        except InvalidStatus as exc:
            if exc.response.status_code == 404:
                raise RouteMissing(f"{self.route} answered 404") from None
            raise

    async def _read_loop(self) -> None:
        async for frame in self.ws:
            self.deliver(frame)

    async def _close_transport(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)


KINDS: dict[str, type[Consumer]] = {"sse": SseConsumer, "comet": CometConsumer, "ws": WsConsumer}


async def connect_all(consumers: list[Consumer], parallel: int = 50) -> None:
    """Connect and start consumers, ``parallel`` handshakes at a time (the listen backlog is
    small). A missing route raises RouteMissing at once."""
    gate = asyncio.Semaphore(parallel)

    async def one(consumer: Consumer) -> None:
        async with gate:
            await consumer.connect()
            consumer.start()

    await asyncio.gather(*(one(c) for c in consumers))


async def close_all(consumers: list[Consumer]) -> None:
    await asyncio.gather(*(c.close() for c in consumers), return_exceptions=True)
