"""XML-RPC at ``/xmlrpc`` and ``/RPC2``: the queue operations as methods.

Every method is one call of restmq.operations.queue_operations, the same ones the REST and JSON
routes make, so an ``add`` here wakes streaming consumers exactly like a POST.
Errors are Faults with stable codes (the constants below, mapped in ``as_fault``),
always inside an HTTP 200 answer as XML-RPC wants. The standard library reads and
writes the XML; cyclone's own XML-RPC handler is not used (see
docs/cyclone.md).
"""

from __future__ import annotations

import datetime
import re
import xmlrpc.client
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from restmq.access import acl
from restmq.errors import (
    DataConflict,
    EmptyQueue,
    InvalidArgument,
    OutcomeUnknown,
    QueueFull,
    RestMQError,
    StorageFull,
    StorageUnavailable,
)
from restmq.operations import jsontext
from restmq.web import shapes
from restmq.web.handlers.base import BaseHandler

log = Logger(namespace="restmq.xmlrpc")

# Fault codes (docs/xmlrpc.rst lists them). The queue errors reuse the HTTP status a REST
# client would get.
INVALID_ARGUMENT = 400  # bad queue name, value, ttl, key or policy; wrong number of arguments
UNAUTHORIZED = 401  # acl.conf wants a username and password (HTTP Basic): none, or wrong
FORBIDDEN = 403  # acl.conf refuses the client address
EMPTY_QUEUE = 404  # the queue is empty (get, take)
DATA_CONFLICT = 409  # a Redis key of the queue holds another kind of value (not RestMQ's)
STORAGE_UNAVAILABLE = 503  # Redis is unreachable, nothing was done; try again
OUTCOME_UNKNOWN = 504  # a write reached Redis but its answer was lost: check before retrying
FULL = 507  # the queue is at its max_length, or Valkey at its maxmemory: nothing was stored
PARSE_ERROR = -32700  # the body is not well-formed XML-RPC
NOT_A_CALL = -32600  # well-formed, but not a <methodCall>
UNKNOWN_METHOD = -32601  # no such method (system.listMethods lists them)
INTERNAL_ERROR = -32603  # a bug: the broker log has the details
INTERNAL_ERROR_TEXT = "internal error; see the broker log"

# -- arguments -----------------------------------------------------------------


def _message_text(value: Any) -> str:
    """What to store: text as is; numbers, booleans, arrays and structs as JSON text;
    base64 as the UTF-8 text it holds."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("a base64 value must hold UTF-8 text") from None
    if not isinstance(value, str | bool | int | float | list | dict):  # nil, dateTime
        raise InvalidArgument(f"cannot store a value of XML-RPC type {_xmlrpc_type(value)}")
    return jsontext.as_text(value, unsupported=_not_storable_inside)


def _xmlrpc_type(value: Any) -> str:
    if isinstance(value, datetime.datetime | xmlrpc.client.DateTime):
        return "dateTime.iso8601"
    if isinstance(value, bytes | bytearray | xmlrpc.client.Binary):
        return "base64"
    return "nil" if value is None else type(value).__name__


def _not_storable_inside(value: Any) -> Any:
    # Arrays and structs are stored as JSON, which has no dates and no binary data.
    raise InvalidArgument(
        f"an array or struct cannot hold a {_xmlrpc_type(value)} value: inside them only "
        "strings, numbers, booleans, arrays and structs can be stored"
    )


# -- methods -------------------------------------------------------------------

Run = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    run: Run
    section: str | None  # the acl.conf section a caller needs (None: each inner call checks)
    signatures: tuple[tuple[str, ...], ...]  # (return type, argument types...)
    help: str
    nil_when_empty: bool = False  # answers <nil/> for an empty queue (needs the extension)

    def check_arguments(self, params: tuple) -> None:
        counts = sorted({len(signature) - 1 for signature in self.signatures})
        if len(params) not in counts:
            wanted = " or ".join(str(n) for n in counts)
            raise InvalidArgument(
                f"{self.name} takes {wanted} argument(s), not {len(params)}: {self.help}"
            )


async def _add(
    handler: XmlRpcHandler, queue: Any, value: Any, ttl: Any = None, delay: Any = None
) -> str:
    """``add`` and the original's ``set`` (which has no ttl). With a delay, a ttl of 0
    means none (XML-RPC has no nil without its extension)."""
    if delay is not None and ttl == 0 and not isinstance(ttl, bool):
        ttl = None
    return (await handler.operations.add(queue, _message_text(value), ttl, delay=delay)).key


async def _get(handler: XmlRpcHandler, queue: Any) -> str:
    return (await handler.operations.pop(queue)).value


async def _take(handler: XmlRpcHandler, queue: Any) -> dict:
    message = await handler.operations.pop(queue)
    return shapes.xmlrpc_taken(queue, message)


async def _lease(handler: XmlRpcHandler, queue: Any, seconds: Any) -> dict | None:
    taken = await handler.operations.take(queue, lease=seconds)
    return shapes.xmlrpc_leased(taken[0]) if taken else None


async def _ack(handler: XmlRpcHandler, queue: Any, receipt: Any) -> bool:
    if not isinstance(receipt, str) or not receipt:
        raise InvalidArgument("a receipt is required, such as q:5@1")
    return (await handler.operations.ack(queue, [receipt]))[0].acked


async def _release(handler: XmlRpcHandler, queue: Any, receipt: Any) -> bool:
    return await handler.operations.release(queue, receipt)


async def _del(handler: XmlRpcHandler, queue: Any, key: Any) -> bool:
    return (await handler.operations.delete(queue, key)).deleted


async def _len(handler: XmlRpcHandler, queue: Any) -> int:
    return await handler.operations.length(queue)


async def _queues(handler: XmlRpcHandler) -> list[str]:
    return await handler.operations.queues()


async def _policy_get(handler: XmlRpcHandler, queue: Any) -> str:
    return (await handler.operations.policy(queue)).policy


async def _policy_set(handler: XmlRpcHandler, queue: Any, policy: Any) -> str:
    return (await handler.operations.set_policy(queue, policy)).policy


async def _status(handler: XmlRpcHandler, queue: Any) -> int:
    return (await handler.operations.status(queue)).status


async def _start(handler: XmlRpcHandler, queue: Any) -> int:
    return (await handler.operations.set_status(queue, "start")).status


async def _stop(handler: XmlRpcHandler, queue: Any) -> int:
    return (await handler.operations.set_status(queue, "stop")).status


async def _stats(handler: XmlRpcHandler, queue: Any = None) -> dict:
    """The /stats answers: every queue, or one."""
    if queue is None or queue == "":
        return shapes.all_stats(await handler.operations.all_stats())
    return shapes.one_stats(await handler.operations.stats(queue))


async def _list_methods(handler: XmlRpcHandler) -> list[str]:
    return sorted(METHODS)


def _known(name: Any) -> Method:
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise InvalidArgument(f"no method named {str(name)[:80]!r}")
    return method


async def _method_help(handler: XmlRpcHandler, name: Any) -> str:
    return _known(name).help


async def _method_signature(handler: XmlRpcHandler, name: Any) -> list[list[str]]:
    return [list(signature) for signature in _known(name).signatures]


async def _multicall(handler: XmlRpcHandler, calls: Any) -> list:
    """Several calls in one request, run in order; each gets [result] or a fault struct."""
    if not isinstance(calls, list):
        raise InvalidArgument("system.multicall takes an array of {methodName, params} structs")
    results: list = []
    for call in calls:
        try:
            if not isinstance(call, dict) or not isinstance(call.get("methodName"), str):
                raise xmlrpc.client.Fault(INVALID_ARGUMENT, "each call is a struct with methodName")
            params = call.get("params", [])
            if not isinstance(params, list):
                raise xmlrpc.client.Fault(INVALID_ARGUMENT, "params must be an array")
            if call["methodName"] == "system.multicall":
                raise xmlrpc.client.Fault(INVALID_ARGUMENT, "system.multicall cannot nest")
            results.append([await handler.call(call["methodName"], tuple(params))])
        except xmlrpc.client.Fault as fault:
            results.append({"faultCode": fault.faultCode, "faultString": fault.faultString})
    return results


_S, _I, _B, _STRUCT, _ARRAY = "string", "int", "boolean", "struct", "array"

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("set", _add, acl.PRODUCER, ((_S, _S, _S),),
               "set(queue, value) -> key: add a message (the original 2009 method)"),
        Method("get", _get, acl.CONSUMER, ((_S, _S),),
               "get(queue) -> value: take the oldest message and return its value "
               "(the original 2009 method); fault 404 when the queue is empty"),
        Method("add", _add, acl.PRODUCER, ((_S, _S, _S), (_S, _S, _S, _I), (_S, _S, _S, _I, _I)),
               "add(queue, value[, ttl[, delay]]) -> key: add a message that expires after ttl "
               "seconds (0: never, with a delay) and can be taken delay seconds from now"),
        Method("take", _take, acl.CONSUMER, ((_STRUCT, _S),),
               "take(queue) -> {queue, key, value}: take the oldest message; "
               "fault 404 when the queue is empty"),
        Method("lease", _lease, acl.CONSUMER, ((_STRUCT, _S, _I),),
               "lease(queue, seconds) -> {key, value, receipt, deliveries}: take the oldest "
               "message under a lease of 1-43200 seconds; ack it with its receipt before the "
               "lease ends, or it goes back to the head of the queue; nil when the queue is "
               "empty", nil_when_empty=True),
        Method("ack", _ack, acl.CONSUMER, ((_B, _S, _S),),
               "ack(queue, receipt) -> boolean: delete a leased message; false when its "
               "lease is gone (ran out, or the message was handed out again)"),
        Method("release", _release, acl.CONSUMER, ((_B, _S, _S),),
               "release(queue, receipt) -> boolean: end a lease now, the message back at "
               "the head of the queue; false when the lease is gone"),
        Method("del", _del, acl.PRODUCER, ((_B, _S, _S),),
               "del(queue, key) -> boolean: delete a pending message by key; "
               "true if it was there"),
        Method("len", _len, acl.CONSUMER, ((_I, _S),),
               "len(queue) -> int: number of pending messages"),
        Method("queues", _queues, acl.CONSUMER, ((_ARRAY,),),
               "queues() -> array: the names of all queues"),
        Method("policy_get", _policy_get, acl.CONSUMER, ((_S, _S),),
               "policy_get(queue) -> 'broadcast' or 'roundrobin'"),
        Method("policy_set", _policy_set, acl.PRODUCER, ((_S, _S, _S),),
               "policy_set(queue, policy) -> policy: set 'broadcast' or 'roundrobin'"),
        Method("status", _status, acl.CONSUMER, ((_I, _S),),
               "status(queue) -> int: 1 started, 0 stopped"),
        Method("start", _start, acl.PRODUCER, ((_I, _S),),
               "start(queue) -> 1: deliver to streaming consumers again"),
        Method("stop", _stop, acl.PRODUCER, ((_I, _S),),
               "stop(queue) -> 0: hold messages back from streaming consumers"),
        Method("stats", _stats, acl.CONSUMER, ((_STRUCT,), (_STRUCT, _S)),
               "stats([queue]) -> struct: the /stats/ answer for every queue, or for one"),
        Method("system.listMethods", _list_methods, acl.CONSUMER, ((_ARRAY,),),
               "system.listMethods() -> array: the names of all methods"),
        Method("system.methodHelp", _method_help, acl.CONSUMER, ((_S, _S),),
               "system.methodHelp(name) -> string: what a method does"),
        Method("system.methodSignature", _method_signature, acl.CONSUMER, ((_ARRAY, _S),),
               "system.methodSignature(name) -> array of [return type, argument types...]"),
        Method("system.multicall", _multicall, None, ((_ARRAY, _ARRAY),),
               "system.multicall([{methodName, params}, ...]) -> array: each result as "
               "[value], or a {faultCode, faultString} struct; each call is checked on its own"),
    ]
}  # fmt: skip


# -- the wire ------------------------------------------------------------------


def as_fault(exc: RestMQError) -> xmlrpc.client.Fault | None:
    """The Fault for one of our own errors (restmq.errors.RestMQError, acl refusals
    among them); None for one no method can raise (LeaseGone: ``ack`` answers false;
    TooManyConsumers: XML-RPC opens no stream; IdempotencyConflict: its ``add`` takes no
    idempotency key), which is then a bug like any other."""
    if isinstance(exc, acl.Refused):  # UNAUTHORIZED or FORBIDDEN
        return xmlrpc.client.Fault(exc.status, exc.message)
    if isinstance(exc, InvalidArgument):
        return xmlrpc.client.Fault(INVALID_ARGUMENT, str(exc))
    if isinstance(exc, EmptyQueue):
        return xmlrpc.client.Fault(EMPTY_QUEUE, str(exc))
    if isinstance(exc, DataConflict):
        return xmlrpc.client.Fault(DATA_CONFLICT, str(exc))
    if isinstance(exc, QueueFull | StorageFull):
        return xmlrpc.client.Fault(FULL, str(exc))
    if isinstance(exc, OutcomeUnknown):  # the write may have happened: check before retrying
        return xmlrpc.client.Fault(OUTCOME_UNKNOWN, str(exc))
    if isinstance(exc, StorageUnavailable):
        return xmlrpc.client.Fault(STORAGE_UNAVAILABLE, str(exc))
    return None


# Characters XML 1.0 cannot carry at all; such text travels as base64 instead.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Marshaller(xmlrpc.client.Marshaller):
    """The standard marshaller, keeping message text intact on the way out."""

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def dump_text(self, value: str, write: Callable[[str], Any]) -> None:
        if _NOT_XML.search(value):
            self.dump_bytes(value.encode("utf-8", "surrogatepass"), write)
            return
        # A bare CR would reach the client as LF (XML line-end handling): escape it.
        write("<value><string>")
        write(xmlrpc.client.escape(value).replace("\r", "&#13;"))
        write("</string></value>\n")

    dispatch[str] = dump_text


def response_body(result: Any, allow_none: bool = False) -> bytes:
    """A <methodResponse> holding ``result``, or the fault when it is one. ``<nil/>`` is
    written only where a method says so (``allow_none``)."""
    marshaller = _Marshaller("utf-8", allow_none=allow_none)
    payload = (
        marshaller.dumps(result)
        if isinstance(result, xmlrpc.client.Fault)
        else marshaller.dumps((result,))
    )
    return f"<?xml version='1.0'?>\n<methodResponse>\n{payload}</methodResponse>\n".encode()


def parse_call(body: bytes) -> tuple[str, tuple]:
    """Method name and arguments of a <methodCall>; a Fault when it is not one."""
    try:
        params, name = xmlrpc.client.loads(body, use_builtin_types=True)
    except xmlrpc.client.Fault:
        raise xmlrpc.client.Fault(NOT_A_CALL, "send a <methodCall>, not a fault") from None
    except Exception as exc:  # expat, and the unmarshaller's ValueError/TypeError/...
        raise xmlrpc.client.Fault(PARSE_ERROR, f"malformed XML-RPC request: {exc}") from None
    if not name:
        raise xmlrpc.client.Fault(NOT_A_CALL, "send a <methodCall> with a <methodName>")
    return name, params


class XmlRpcHandler(BaseHandler):
    """``POST /xmlrpc`` and ``POST /RPC2``: one method call (or a multicall) per request.

    There is no route-wide acl section: each method checks rest:producer or
    rest:consumer by what it does, so a multicall is checked call by call.
    """

    async def post(self) -> None:
        allow_none = False
        try:
            name, params = parse_call(self.request.body or b"")
            method = METHODS.get(name)
            allow_none = method is not None and method.nil_when_empty
            result = await self.call(name, params)
        except xmlrpc.client.Fault as fault:
            result = fault
        except Exception:
            log.failure("XML-RPC call failed")
            result = xmlrpc.client.Fault(INTERNAL_ERROR, INTERNAL_ERROR_TEXT)
        try:
            body = response_body(result, allow_none)
        except (OverflowError, TypeError) as exc:
            log.error("XML-RPC answer cannot be encoded: {error}", error=exc)
            body = response_body(xmlrpc.client.Fault(INTERNAL_ERROR, INTERNAL_ERROR_TEXT))
        self.set_header("Content-Type", "text/xml; charset=UTF-8")
        self.finish(body)

    async def call(self, name: str, params: tuple) -> Any:
        """Run one method: access check, arguments, operation call; errors become Faults."""
        method = METHODS.get(name)
        if method is None:
            raise xmlrpc.client.Fault(
                UNKNOWN_METHOD, f"unknown method {name[:80]!r}; system.listMethods lists them"
            )
        try:
            if method.section is not None:
                await self.broker.check_access_async(self.request, method.section)
            method.check_arguments(params)
            return await method.run(self, *params)
        except RestMQError as exc:
            fault = as_fault(exc)
            if fault is None:
                raise  # a bug: post() logs it and answers INTERNAL_ERROR
            if isinstance(exc, acl.Refused):
                log.info("XML-RPC {method} refused for {client}: {error}",
                         method=name, client=self.request.remote_ip, error=exc.message)  # fmt: skip
            elif isinstance(exc, StorageUnavailable):
                log.warn("XML-RPC {method}: {error}", method=name, error=exc)
            raise fault from None
