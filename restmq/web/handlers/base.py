"""BaseHandler: what every RestMQ HTTP handler shares.

HTTP in (arguments, JSON bodies, the queue name from the path), operation call,
HTTP out (JSON answers ending in CRLF, JSONP, errors as JSON bodies).
"""

from __future__ import annotations

import json
import re
from typing import Any

import cyclone.web
from twisted.logger import Logger

from restmq import __version__
from restmq.access import acl
from restmq.errors import (
    DataConflict,
    EmptyQueue,
    IdempotencyConflict,
    InvalidArgument,
    LeaseGone,
    OutcomeUnknown,
    QueueFull,
    RestMQError,
    StorageFull,
    StorageUnavailable,
    TooManyConsumers,
)
from restmq.operations import jsontext, validation
from restmq.web import plain_json
from restmq.web.connection import cyclone_fixes
from restmq.web.connection.http_policy import error_body

log = Logger(namespace="restmq.http")

SERVER = f"RestMQ/{__version__}"


class ApiError(cyclone.web.HTTPError):
    """An answer other than 2xx, with the message the client gets as ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.message = message
        self.headers = headers or {}


# The original's encoding: ", " and ": " separators, non-ASCII escaped. Never
# NaN/Infinity: they are not JSON (input refuses them, see restmq.operations.jsontext). Made once:
# json.dumps with an option builds a new encoder for every answer.
_JSON = json.JSONEncoder(allow_nan=False)


def encode_json(obj: Any) -> str:
    return _JSON.encode(obj)


def as_api_error(exc: BaseException) -> ApiError | None:
    """The HTTP answer to one of our own errors (restmq.errors.RestMQError, acl refusals
    among them); None for anything else (a 500). Every HTTP route, streams and WebSocket
    handshakes included, maps errors here; a route that answers one differently says so
    in its own table."""
    if isinstance(exc, ApiError):
        return exc
    if not isinstance(exc, RestMQError):
        return None
    if isinstance(exc, InvalidArgument):
        return ApiError(400, str(exc))
    if isinstance(exc, acl.Refused):  # 403, or 401 with its Basic challenge
        return ApiError(exc.status, exc.message, exc.headers)
    if isinstance(exc, EmptyQueue):
        return ApiError(404, str(exc))
    if isinstance(exc, DataConflict | LeaseGone):
        return ApiError(409, str(exc))
    if isinstance(exc, QueueFull | StorageFull):  # nothing stored; room comes as it drains
        return ApiError(507, str(exc))
    if isinstance(exc, OutcomeUnknown):  # no Retry-After: a blind retry may store twice
        return ApiError(504, str(exc))
    if isinstance(exc, StorageUnavailable):
        return ApiError(503, str(exc), {"Retry-After": "1"})
    if isinstance(exc, TooManyConsumers):  # a stream or WebSocket beyond --max-consumers
        return ApiError(503, str(exc), {"Retry-After": "5"})
    if isinstance(exc, IdempotencyConflict):  # the key came again with another payload
        return ApiError(422, str(exc))
    return None


def write_json_error(
    handler: cyclone.web.RequestHandler, exc: BaseException | None, message: str
) -> None:
    """Finish an error answer as ``{"error": message}``; an ApiError brings its own
    message and headers (401's challenge, 503's Retry-After)."""
    if isinstance(exc, ApiError):
        message = exc.message
        for name, value in exc.headers.items():
            handler.set_header(name, value)
    handler.set_header("Content-Type", "application/json; charset=UTF-8")
    handler.finish(error_body(message))


def _argument_text(name: str, value: str | bytes | memoryview) -> str:
    if not isinstance(value, str):  # a form field: bytes, or a view of the body
        try:
            return str(value, "utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"argument {name!r} is not valid UTF-8") from None
    return value


def method_not_allowed(handler: cyclone.web.RequestHandler) -> str:
    """The message of a 405; sets its ``Allow`` header, as RFC 9110 15.5.6 requires."""
    handler.set_header("Allow", ", ".join(allowed_methods(type(handler))))
    return f"method {handler.request.method} is not allowed on {handler.request.path}"


def allowed_methods(handler_class: type[cyclone.web.RequestHandler]) -> tuple[str, ...]:
    """The methods a handler class answers: those it defines over cyclone's defaults.

    Every 405 lists them in its ``Allow`` header, as RFC 9110 15.5.6 requires.
    """
    default = cyclone.web.RequestHandler
    return tuple(
        method
        for method in handler_class.SUPPORTED_METHODS
        if getattr(handler_class, method.lower(), None)
        is not getattr(default, method.lower(), None)
    )


class BrokerRequestMixin(cyclone_fixes.ErrorAnswerMixin):
    """What every RestMQ route shares, the static files included: acl.conf is checked
    before the handler method runs, and our own errors become their HTTP answers."""

    #: acl.conf section that guards each HTTP method of this route (see restmq.access.acl)
    access: dict[str, str] = {}

    @property
    def broker(self):
        return self.application.broker

    def required_section(self) -> str | None:
        """The acl.conf section this request needs; a route whose arguments change what
        a method does (an ack is a DELETE that consumes) overrides this."""
        return self.access.get(self.request.method)

    def prepare(self):
        section = self.required_section()
        if section is None or self.broker.access_is_open(section):
            return self._admitted()
        # Fired at once unless acl.conf wants a scrypt password checked (in a thread);
        # cyclone waits for the Deferred before it runs the handler method.
        return self.broker.check_access_async(self.request, section).addCallback(self._admitted)

    def _admitted(self, _: Any = None) -> None:
        if cyclone_fixes.client_is_gone(self):
            # It left while its password was checked: nothing to run, nobody to answer.
            cyclone_fixes.mark_finished(self)
            return
        name = cyclone_fixes.undecodable_argument(self.request)
        if name is not None:
            raise InvalidArgument(f"argument {name!r} is not valid UTF-8")

    def error_to_answer(self, error):
        # Our own errors become their answers before cyclone's generic handling.
        value = getattr(error, "value", error)
        answer = as_api_error(value)
        if answer is None:
            return error
        if isinstance(value, StorageUnavailable):
            log.warn(
                "{method} {path}: {error}",
                method=self.request.method,
                path=self.request.path,
                error=value,
            )
        return answer


class BaseHandler(
    BrokerRequestMixin,
    cyclone_fixes.PlusInPathMixin,
    cyclone_fixes.CoroutineHandlerMixin,
    cyclone.web.RequestHandler,
):
    """Thin handlers: parse, call an operation, answer. Errors become JSON bodies."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS")

    def initialize(self, route: re.Pattern | None = None, **kwargs: Any) -> None:
        self.route = route

    def set_default_headers(self) -> None:
        self.set_header("Server", SERVER)  # called by clear() for every response

    @property
    def operations(self):
        """The queue operations (restmq.operations.queue_operations) every handler calls."""
        return self.application.broker.operations

    # -- request parsing ----------------------------------------------------

    def decode_argument(self, value, name=None):
        return value

    def compute_etag(self):
        # No ETag: a GET may pop a message, and a matching If-None-Match would turn
        # the answer into a bodiless 304 after the message was already taken.
        return None

    def arg(self, name: str, default: str | None = None) -> str | None:
        """A query-string or form argument; ``default`` when it is absent."""
        values = self.request.arguments.get(name)
        if not values:
            return default
        return _argument_text(name, values[-1])

    def message_arg(self, name: str) -> str | bytes | memoryview | None:
        """A message sent as an argument, as it came: a form field stays bytes (checked
        UTF-8) all the way to Redis, so a large one is never held as text too."""
        values = self.request.arguments.get(name)
        return values[-1] if values else None

    def all_args(self, name: str) -> list[str]:
        """Every value of a repeated argument (``receipt=a&receipt=b``), as text."""
        return [_argument_text(name, value) for value in self.request.arguments.get(name, [])]

    def is_json_body(self) -> bool:
        content_type = self.request.headers.get("Content-Type", "")
        return content_type.split(";")[0].strip().lower() == "application/json"

    def json_body(self) -> Any:
        """The request body parsed as JSON; 400 when it is not (or holds NaN, or nests too deep)."""
        parsed = jsontext.decode(self.request.body or b"", what="JSON body")
        self.let_body_go()
        return parsed

    def json_message(self) -> Any:
        """As ``json_body``; the plain ``{"value": "<text>"}`` is read without decoding,
        its value a view of the body's UTF-8 bytes (restmq.web.plain_json)."""
        value = plain_json.plain_value(self.request.body or b"")
        if value is None:
            return self.json_body()
        self.let_body_go()  # the view keeps the bytes it needs
        return {"value": value}

    def let_body_go(self) -> None:
        """The body has been read (parsed JSON, form fields): let the raw bytes go, so
        that a large message is not held twice while it is stored (a form value with
        %-escapes is a copy; one without is a view that keeps its bytes alive)."""
        self.request.body = b""

    def callback(self) -> str | None:
        return validation.callback_name(self.arg("callback"))

    # -- answers ------------------------------------------------------------

    def answer(self, obj: Any, status: int = 200, callback: str | None = None) -> None:
        """Finish with ``obj`` as JSON and CRLF, or as ``callback(obj);`` (JSONP)."""
        self.answer_json_text(encode_json(obj), status, callback)

    def answer_json_text(self, text: str, status: int = 200, callback: str | None = None) -> None:
        """Finish with ``text``, already JSON, as ``answer`` does."""
        self.set_status(status)
        if callback:
            self.set_header("Content-Type", "application/javascript; charset=UTF-8")
            self.finish(f"{callback}({text});\r\n")
        else:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(text + "\r\n")

    def answer_text(self, text: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(text)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            message = method_not_allowed(self)
        elif status_code == 404:
            message = f"no such route: {self.request.path}"
        elif status_code >= 500:
            message = "internal error; see the broker log"
        else:
            message = cyclone_fixes.reason_of(self)
        write_json_error(self, cyclone_fixes.exception_of(kwargs), message)

    # -- streaming connections ---------------------------------------------

    def on_connection_close(self, *args):
        # cyclone calls this on a normal finish too: only a real disconnect counts.
        # Keep the shared Deferred's value.
        if cyclone_fixes.client_is_gone(self):
            self.on_client_gone()
        return args[0] if args else None

    def on_client_gone(self) -> None:
        """Override in long-lived handlers to let go of resources."""


class NotFoundHandler(BaseHandler):
    """Every path no route matches: 404 with a JSON error."""

    def prepare(self):
        raise ApiError(404, f"no such route: {self.request.path}")
