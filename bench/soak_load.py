"""The mixed load of the soak: paced producers and every kind of consumer, and the ledger
of message ids that tells, at the end, whether an acknowledged message was lost.

Every message value starts with an id no other message has (``<producer>-<n>|xxx``).
A producer records the ids the broker answered 200 for; a consumer records an id as
*consumed* when it took the message for good: a plain pop, a long poll, an unleased
stream delivery, or a leased delivery whose ack was accepted. Leased deliveries are
also counted apart, so that messages handed out again after a consumer died show up
as redeliveries rather than as duplicates.

HTTP consumers are never cancelled in the middle of a request (an answer already on
its way would be taken by the broker and dropped by us, which would read as a loss):
they stop between requests once their ``stop`` event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field

from bench.consumers import SseConsumer, WsConsumer
from bench.httpclient import HttpConnection, HttpError, Response, encode_request, form_body
from bench.publish import FORM

REQUEST_TIMEOUT = 30.0  # seconds; a long poll waits at most 5, a leased take 2
NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, HttpError)


def message_id(value: object) -> str | None:
    """The id at the front of a soak message value, None for anything else."""
    if not isinstance(value, str) or "|" not in value:
        return None
    return value.split("|", 1)[0]


@dataclass
class Ledger:
    """What happened to every message id during a soak."""

    acknowledged: set[str] = field(default_factory=set)  # answered 200 to its producer
    consumed: Counter = field(default_factory=Counter)  # taken for good, per id
    leased_deliveries: Counter = field(default_factory=Counter)  # per id, redeliveries too
    left: Counter = field(default_factory=Counter)  # popped by the final drain
    unanswered: int = 0  # messages whose POST got no 200: their fate is unknown
    abandoned: int = 0  # leased messages held by a consumer that died without acking
    ack_refused: int = 0  # acks answered 409 / "acked": false (the lease was gone)
    consumer_deaths: int = 0
    stream_reconnects: int = 0
    statuses: Counter = field(default_factory=Counter)  # unexpected answers, by kind
    errors: Counter = field(default_factory=Counter)  # network errors, by kind
    by_consumer: Counter = field(default_factory=Counter)  # messages consumed, per kind
    messages_in: int = 0
    messages_out: int = 0

    def produced(self, ids: list[str]) -> None:
        self.acknowledged.update(ids)
        self.messages_in += len(ids)

    def consume(self, value: object, kind: str) -> None:
        ident = message_id(value)
        if ident is not None:
            self.consumed[ident] += 1
            self.by_consumer[kind] += 1
            self.messages_out += 1

    def unconsume(self, ident: str, kind: str) -> None:
        """An ack we counted was refused after all: the message will come again."""
        self.consumed[ident] -= 1
        self.by_consumer[kind] -= 1
        self.messages_out -= 1
        if self.consumed[ident] <= 0:
            del self.consumed[ident]

    def note_error(self, who: str, exc: BaseException) -> None:
        self.errors[f"{who}: {type(exc).__name__}"] += 1

    def note_status(self, who: str, response: Response) -> None:
        self.statuses[f"{who}: HTTP {response.status} {response.body[:80]!r}"] += 1


@dataclass(frozen=True)
class Target:
    port: int
    queue: str


async def _request(
    conn: HttpConnection, target: Target, method: str, path: str, body: bytes = b"", ctype=None
) -> Response:
    raw = encode_request(method, path, port=target.port, body=body, content_type=ctype)
    return await asyncio.wait_for(conn.request(raw, method), REQUEST_TIMEOUT)


def _messages(response: Response) -> list[dict]:
    payload = json.loads(response.body)
    return payload if isinstance(payload, list) else [payload]


# -- producers ----------------------------------------------------------------


async def producer(
    target: Target, tag: str, rate: float, batch: int, size: int, ledger: Ledger, stop
) -> None:
    """``rate`` messages/s to ``target``: one ``value=`` form POST each when ``batch`` is 1,
    else JSON ``{"values": [...]}`` batches. Open loop: a request goes when its time
    comes; a producer more than a second behind its schedule starts a new one."""
    loop = asyncio.get_running_loop()
    conn = HttpConnection(target.port)
    path = f"/q/{target.queue}"
    sequence = 0
    due = loop.time()
    try:
        while not stop.is_set():
            delay = due - loop.time()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            due = max(due, loop.time() - 1.0) + batch / rate
            ids = [f"{tag}-{sequence + i}" for i in range(batch)]
            sequence += batch
            values = [ident + "|" + "x" * max(0, size - len(ident) - 1) for ident in ids]
            if batch == 1:
                body, ctype = form_body(value=values[0]), FORM
            else:
                body, ctype = json.dumps({"values": values}).encode(), "application/json"
            try:
                response = await _request(conn, target, "POST", path, body, ctype)
            except NETWORK_ERRORS as exc:
                ledger.note_error(f"producer {tag}", exc)
                ledger.unanswered += batch
                conn.close()
                continue
            if response.status == 200:
                ledger.produced(ids)
            else:
                ledger.note_status(f"producer {tag}", response)
                ledger.unanswered += batch
    finally:
        conn.close()


# -- HTTP consumers -----------------------------------------------------------


async def popper(target: Target, query: str, ledger: Ledger, stop, idle: float = 0.05) -> None:
    """Pops with ``GET /q/<q>?<query>`` (plain, ``n=``, ``wait=``) until ``stop``; after a
    204 a plain pop waits ``idle`` seconds, a long poll asks again at once."""
    conn = HttpConnection(target.port)
    path = f"/q/{target.queue}" + (f"?{query}" if query else "")
    who = f"GET {path}"
    kind = "long poll" if "wait=" in query else "plain pop"
    try:
        while not stop.is_set():
            try:
                response = await _request(conn, target, "GET", path)
            except NETWORK_ERRORS as exc:
                ledger.note_error(who, exc)
                conn.close()
                await asyncio.sleep(0.1)
                continue
            if response.status == 200:
                for message in _messages(response):
                    ledger.consume(message.get("value"), kind)
            elif response.status == 204:
                if "wait=" not in query:
                    await asyncio.sleep(idle)
            else:
                ledger.note_status(who, response)
                await asyncio.sleep(0.1)
    finally:
        conn.close()


async def leased_consumer(
    target: Target, lease: int, life: tuple[int, int], seed: int, ledger: Ledger, stop
) -> None:
    """Takes under a lease (``GET /q/<q>?lease=S&wait=2``, one or five at a time) and acks
    with ``DELETE /q/<q>?receipt=R``. After a random number of takes within ``life`` it
    dies holding what it just took: it closes its connection without acking and comes
    back on a new one; the broker hands those messages out again when their lease ends."""
    rng = random.Random(seed)
    conn = HttpConnection(target.port)
    base = f"/q/{target.queue}"
    takes_left = rng.randint(*life)
    try:
        while not stop.is_set():
            n = rng.choice((1, 1, 5))
            path = f"{base}?lease={lease}&wait=2" + (f"&n={n}" if n > 1 else "")
            try:
                response = await _request(conn, target, "GET", path)
            except NETWORK_ERRORS as exc:
                ledger.note_error("leased take", exc)
                conn.close()
                await asyncio.sleep(0.1)
                continue
            if response.status == 204 or (response.status == 200 and response.body == b"[]\r\n"):
                continue
            if response.status != 200:
                ledger.note_status("leased take", response)
                await asyncio.sleep(0.1)
                continue
            taken = _messages(response)
            for message in taken:
                if (ident := message_id(message.get("value"))) is not None:
                    ledger.leased_deliveries[ident] += 1
            takes_left -= 1
            if takes_left <= 0:  # die: no ack, a new connection
                conn.close()
                ledger.consumer_deaths += 1
                ledger.abandoned += len(taken)
                takes_left = rng.randint(*life)
                continue
            await _ack(conn, target, taken, ledger)
    finally:
        conn.close()


async def _ack(conn: HttpConnection, target: Target, taken: list[dict], ledger: Ledger) -> None:
    receipts = "&".join(f"receipt={m['receipt']}" for m in taken)
    try:
        response = await _request(conn, target, "DELETE", f"/q/{target.queue}?{receipts}")
    except NETWORK_ERRORS as exc:
        ledger.note_error("ack", exc)  # the leases run out: the messages come again
        conn.close()
        return
    if response.status == 409:
        ledger.ack_refused += len(taken)
        return
    if response.status != 200:
        ledger.note_status("ack", response)
        return
    answers = _messages(response)
    for message, answer in zip(taken, answers, strict=False):
        if answer.get("acked") is True:
            ledger.consume(message.get("value"), "leased take + ack")
        else:
            ledger.ack_refused += 1


# -- streams ------------------------------------------------------------------


class _ConsumesEveryMessage:
    """A stream consumer (mixed in before its transport's class) for which every message
    received counts as consumed, under ``kind`` in the ledger."""

    kind = ""

    def __init__(self, target: Target, ledger: Ledger) -> None:
        super().__init__(target.port, target.queue)
        self.ledger = ledger

    def deliver(self, text: str | bytes) -> None:
        super().deliver(text)
        message = json.loads(text)
        if isinstance(message, dict):
            self.ledger.consume(message.get("value"), self.kind)


class SoakSse(_ConsumesEveryMessage, SseConsumer):
    """``GET /c/<q>``, ``Accept: text/event-stream``: every event is consumed."""

    kind = "SSE"


class SoakWs(_ConsumesEveryMessage, WsConsumer):
    """``/ws/<q>``, unleased: every frame is consumed."""

    kind = "WebSocket"


class SoakLeasedWs(WsConsumer):
    """``/ws/<q>?lease=S&prefetch=P``, acking each message with an ``{"ack": R}`` frame.

    An ack is counted when sent; an error frame naming its receipt takes it back."""

    def __init__(self, target: Target, ledger: Ledger, lease: int, prefetch: int = 10) -> None:
        super().__init__(target.port, f"{target.queue}?lease={lease}&prefetch={prefetch}")
        self.ledger = ledger
        self.receipts: dict[str, str] = {}

    async def _read_loop(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame)
            if not isinstance(message, dict):
                continue
            if "error" in message:
                ident = self.receipts.pop(message.get("receipt", ""), None)
                self.ledger.ack_refused += 1
                if ident is not None:
                    self.ledger.unconsume(ident, "leased WebSocket")
                continue
            ident = message_id(message.get("value"))
            if ident is None:
                continue
            self.received += 1
            self.ledger.leased_deliveries[ident] += 1
            receipt = message["receipt"]
            # counted before it is sent: a close cutting the send short makes the message
            # come again (a duplicate), never an ack that went out uncounted (a false loss)
            self.receipts[receipt] = ident
            if len(self.receipts) > 1000:  # only recent acks can still be refused
                self.receipts.pop(next(iter(self.receipts)))
            self.ledger.consume(message.get("value"), "leased WebSocket")
            await self.ws.send(json.dumps({"ack": receipt}))


async def churning_streams(
    make, count: int, every: float, ledger: Ledger, stop, streams: list
) -> None:
    """Keeps ``count`` streams from ``make()`` open; every ``every`` seconds one of them
    (in turn) is closed and a new one opened. ``streams`` holds the live ones."""
    for _ in range(count):
        streams.append(await _open_stream(make))
    turn = 0
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            break
        old = streams.pop(turn % len(streams))
        await old.close()
        streams.insert(turn % count, await _open_stream(make))
        ledger.stream_reconnects += 1
        turn += 1


async def _open_stream(make):
    stream = make()
    await stream.connect()
    stream.start()
    return stream
