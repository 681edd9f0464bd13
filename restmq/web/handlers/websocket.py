"""``/ws/<queue>``: a WebSocket consumer (RFC 6455), framed by wsproto.

cyclone.websocket does not work on Python 3 (see docs/cyclone.md), so this
handler takes the connection over itself: it answers the upgrade, puts the
HTTP connection in raw mode and feeds every byte to a wsproto Connection.

``?lease=S&prefetch=P`` makes it a leased stream: each message carries its
``receipt``, and the client's text frames ``{"ack": R}`` and ``{"nack": R}`` ack
a message or release it to the head of the queue. Without lease, the client's
frames are echoed, as the original did.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from restmq.access import acl
from restmq.delivery.stream_consumer import CLOSE_NORMAL, StreamConsumer
from restmq.engine.messages import Message
from restmq.errors import InvalidArgument, StorageUnavailable, TooManyConsumers
from restmq.operations import jsontext, validation
from restmq.web import shapes
from restmq.web.connection import cyclone_fixes, send_queue
from restmq.web.connection.frame_guard import FrameSizeGuard
from restmq.web.handlers.base import ApiError, BaseHandler, encode_json

log = Logger(namespace="restmq.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_INCOMING_MESSAGE = 1 << 20
CLOSE_TOO_BIG = 1009  # RFC 6455 7.4.1: a message too big to process


class WebSocketConsumer(StreamConsumer):
    kind = "websocket"

    def __init__(self, queue: str, peer: str, transport, ws: Connection) -> None:
        super().__init__(queue, peer)
        self.transport = transport
        self.ws = ws
        self.acks = send_queue.track(transport)

    def encode(self, message: Message) -> bytes:
        return self.ws.send(TextMessage(data=encode_json(shapes.stream_message(message))))

    def write(self, data: bytes) -> None:
        if not self.gone:
            self.send_frame(data)

    def send_frame(self, data: bytes) -> None:
        """Every frame goes out here, counted (see restmq.delivery.socket_acks)."""
        self.transport.write(data)
        if self.acks is not None:
            self.acks.count(len(data))

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Hang up: a close frame while the protocol still allows one, then the socket.

        Every way this broker ends a WebSocket goes through here.
        """
        self.gone = True
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self.send_frame(self.ws.send(CloseConnection(code=code, reason=reason)))
        # A TLS transport only closes once its producer is gone.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        self.gone = True
        self.transport.abortConnection()

    # The client's frames are echoed, so its reading must follow our writing: while the
    # send buffer is full (Twisted pauses us, the connection's producer), read nothing.

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if not self.gone:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()  # may fill the buffer again with the backlog
        if not self._paused and not self.gone:
            self.transport.resumeProducing()


def accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()


class WebSocketHandler(cyclone_fixes.OwnDispatchMixin, BaseHandler):
    """Upgrades ``GET /ws/<queue>`` and streams the queue's messages as text frames."""

    def dispatch(self, *args, **kwargs) -> None:
        try:
            queue = self._check_upgrade()
            lease, prefetch = self.arg("lease"), self.arg("prefetch")
            if lease is not None:
                validation.lease_seconds(lease)  # refused before the upgrade, as HTTP
            if prefetch is not None:
                validation.prefetch(prefetch)
        except (ApiError, InvalidArgument) as exc:
            self.answer_error(exc)
            return
        # The answer waits for acl.conf's verdict (a scrypt password is checked in a
        # thread); meanwhile the HTTP connection keeps any bytes the client sent after
        # its handshake, unparsed, until _upgrade hands them to wsproto.
        checking = self.broker.check_access_async(self.request, acl.WEBSOCKET)
        checking.addCallbacks(lambda _: self._upgrade(queue, lease, prefetch), self._refused)
        checking.addErrback(self._failed)

    def _refused(self, failure) -> None:
        failure.trap(acl.Refused)
        if not cyclone_fixes.client_is_gone(self):
            self.answer_error(failure.value)  # 401 or 403, as on every route

    def _failed(self, failure) -> None:
        log.failure("WebSocket handshake failed", failure)
        if cyclone_fixes.client_is_gone(self):
            return
        if hasattr(self, "consumer"):  # already upgraded: no HTTP answer fits any more
            self.operations.close_stream(self.consumer)
            self.request.connection.transport.abortConnection()
        elif not cyclone_fixes.is_finished(self):
            self.send_error(500)

    def _upgrade(self, queue: str, lease: str | None, prefetch: str | None) -> None:
        if cyclone_fixes.client_is_gone(self):
            return  # it left while its password was checked: nothing to register
        connection = self.request.connection
        transport = connection.transport
        ws = Connection(ConnectionType.SERVER)
        consumer = WebSocketConsumer(queue, self.request.remote_ip, transport, ws)
        try:
            self.operations.open_stream(consumer, lease, prefetch)
        except (TooManyConsumers, InvalidArgument) as exc:
            self.answer_error(exc)  # answered like every refusal (as_api_error)
            return
        self.consumer = consumer
        self.ws = ws
        self._incoming: list[str | bytes] = []
        self._incoming_size = 0
        self._frames = FrameSizeGuard(MAX_INCOMING_MESSAGE)
        key = self.request.headers["Sec-WebSocket-Key"].strip()
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_token(key).encode() + b"\r\n\r\n"
        )
        transport.registerProducer(consumer, True)
        connection.notifyFinish().addBoth(self._connection_lost)
        cyclone_fixes.take_over_connection(self, self._data_received)

    def _check_upgrade(self) -> str:
        headers = self.request.headers
        raw = self.route.match(self.request.path).group(1) if self.route else ""
        queue = validation.queue_name(unquote(raw))
        if self.request.method != "GET" or headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(
                400, "this is a WebSocket endpoint: connect with a WebSocket client (ws://)"
            )
        tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        if "upgrade" not in tokens:
            raise ApiError(400, "a WebSocket handshake needs Connection: Upgrade")
        if headers.get("Sec-WebSocket-Version", "").strip() != "13":
            raise ApiError(
                426, "only WebSocket version 13 is supported", {"Sec-WebSocket-Version": "13"}
            )
        key = headers.get("Sec-WebSocket-Key", "").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid = False
        if not valid:
            raise ApiError(400, "invalid Sec-WebSocket-Key")
        return queue

    def _data_received(self, data: bytes) -> None:
        if self.consumer.gone:
            return  # we hung up: what still arrives is dropped
        if self._frames.too_big(data):
            # Waiting for the payload would hold the connection open for as long as the
            # client likes; refuse as soon as the frame header says how much is coming.
            self.consumer.close("too big", code=CLOSE_TOO_BIG)
            return
        self.ws.receive_data(data)
        # wsproto reports a malformed frame as a CloseConnection event (1002, 1007...),
        # answered below like the client's own close.
        for event in self.ws.events():
            self._on_event(event)
            if self.consumer.gone:
                break

    def _on_event(self, event) -> None:
        if isinstance(event, (TextMessage, BytesMessage)):
            self._incoming.append(event.data)
            self._incoming_size += len(event.data)
            if self._incoming_size > MAX_INCOMING_MESSAGE:
                self.consumer.close("too big", code=CLOSE_TOO_BIG)
                return
            if event.message_finished:
                whole = (
                    "".join(self._incoming)
                    if isinstance(event, TextMessage)
                    else b"".join(self._incoming)
                )
                self._incoming, self._incoming_size = [], 0
                if self.consumer.leased and isinstance(event, TextMessage):
                    self._settle(whole)
                    return
                # The original echoes what a consumer sends.
                kind = TextMessage if isinstance(event, TextMessage) else BytesMessage
                self.consumer.send_frame(self.ws.send(kind(data=whole)))
        elif isinstance(event, Ping):
            self.consumer.send_frame(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.operations.close_stream(self.consumer)
            # The answer repeats the client's code and reason (RFC 6455 5.5.1).
            self.consumer.close(event.reason or "", code=event.code)

    def _settle(self, text: str) -> None:
        """``{"ack": R}`` or ``{"nack": R}`` from a leased consumer; what went wrong is
        told in an ``{"error": ..., "receipt": R}`` frame, and the stream goes on."""
        try:
            frame = jsontext.decode(text, what="frame")
        except InvalidArgument:
            frame = None
        verbs = [verb for verb in ("ack", "nack") if isinstance(frame, dict) and verb in frame]
        if len(verbs) != 1 or len(frame) != 1:
            self._tell({"error": 'send {"ack": receipt} or {"nack": receipt}'})
            return
        receipt = frame[verbs[0]]
        d = defer.ensureDeferred(
            self.operations.settle_stream(self.consumer, receipt, ack=verbs[0] == "ack")
        )

        def done(settled: bool) -> None:
            if not settled:
                self._tell({"error": "the lease is gone (ran out, or settled)", "receipt": receipt})

        def failed(failure) -> None:
            failure.trap(InvalidArgument, StorageUnavailable)
            self._tell({"error": failure.getErrorMessage(), "receipt": str(receipt)[:200]})

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: log.failure("settling {receipt} failed", f, receipt=receipt))

    def _tell(self, obj: dict) -> None:
        if not self.consumer.gone:
            self.consumer.send_frame(self.ws.send(TextMessage(data=encode_json(obj))))

    def _connection_lost(self, result):
        self.operations.close_stream(self.consumer)
        return result
