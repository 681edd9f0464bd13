"""The JSON protocol (``/queue``): a command object in, an answer object out.

``{"cmd": "add", "queue": "genesis", "value": "abacab"}`` and its kin. Every
command is one operation (restmq.operations.queue_operations); the answers keep the original's
shapes (restmq.web.shapes).
"""

from __future__ import annotations

from typing import Any

from restmq.access import acl
from restmq.errors import EmptyQueue, InvalidArgument
from restmq.operations import jsontext, validation
from restmq.operations.queue_operations import Operations
from restmq.web import shapes

COMMANDS = ("add", "get", "take", "del", "ack")
#: the acl.conf section each command needs: get/take/ack consume, the rest produce
SECTIONS = {
    "add": acl.PRODUCER,
    "get": acl.CONSUMER,
    "take": acl.CONSUMER,
    "del": acl.PRODUCER,
    "ack": acl.CONSUMER,
}
#: the original's answer to a command it does not know, byte for byte
UNKNOWN_COMMAND = "null resultset"
#: added to an add's answer given again for its "idempotency_key" (nothing stored this time)
REPLAYED_FIELD = "replayed"


def required_section(command: Any) -> str:
    """The acl.conf section a command needs; anything unreadable needs a producer."""
    cmd = command.get("cmd") if isinstance(command, dict) else None
    return SECTIONS.get(cmd, acl.PRODUCER) if isinstance(cmd, str) else acl.PRODUCER


async def dispatch(ops: Operations, command: Any, default_queue: str | None = None) -> dict:
    """Run one JSON-protocol command; ``default_queue`` comes from ``/queue/<name>``.

    The JSON protocol's one answer of its own to the error family: an empty queue is
    ``{"error": "empty queue"}``. Every other error is answered by as_api_error
    (restmq.web.handlers.base), as on the other HTTP routes: an add whose
    ``"idempotency_key"`` came with another payload (IdempotencyConflict) is a 422.
    """
    try:
        return await _run(ops, command, default_queue)
    except EmptyQueue:
        return dict(shapes.JSON_EMPTY)


async def _run(ops: Operations, command: Any, default_queue: str | None) -> dict:
    if not isinstance(command, dict):
        raise InvalidArgument('a command is a JSON object such as {"cmd": "take", "queue": "q"}')
    cmd = command.get("cmd")
    if not cmd:
        raise InvalidArgument('the command has no "cmd" field; use one of ' + ", ".join(COMMANDS))
    if cmd not in COMMANDS:
        raise InvalidArgument(UNKNOWN_COMMAND)
    queue = command.get("queue", default_queue)
    if cmd == "add":
        if "value" not in command:
            raise InvalidArgument("the add command needs a value")
        value = command["value"]
        text = jsontext.as_text(value, null="the add command needs a value")
        added = await ops.add(
            queue,
            text,
            command.get("ttl"),
            delay=command.get("delay"),
            idempotency_key=command.get("idempotency_key"),
        )
        answer = shapes.json_added(added.queue, value, added.key)
        if added.replayed:  # only then: a first add's answer keeps the original's shape
            answer[REPLAYED_FIELD] = True
        return answer
    # A lease is checked even where it changes nothing (get): a bad one is refused, not ignored.
    leased = cmd in ("get", "take") and "lease" in command
    lease = validation.lease_seconds(command["lease"]) if leased else None
    if cmd == "get":
        message = await ops.peek(queue)
        return shapes.json_peeked(queue, message)
    if cmd == "take":
        if lease is None:
            message = await ops.pop(queue)
            return shapes.json_taken(queue, message)
        taken = await ops.take(queue, lease=lease)
        if not taken:
            raise EmptyQueue(queue)
        return shapes.json_taken(queue, taken[0])
    if cmd == "ack":
        receipt = command.get("receipt")
        if not isinstance(receipt, str) or not receipt:
            raise InvalidArgument('the ack command needs a "receipt", such as "q:5@1"')
        return shapes.acked((await ops.ack(queue, [receipt]))[0])
    # del
    if not command.get("key"):
        raise InvalidArgument("the del command needs the key of a message")
    return shapes.json_deleted(await ops.delete(queue, command["key"]))
