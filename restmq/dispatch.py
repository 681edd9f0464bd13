"""The JSON protocol (``/queue``): a command object in, an answer object out.

``{"cmd": "add", "queue": "genesis", "value": "abacab"}`` and its kin. Every
command is one engine call; the answers keep the original's shapes.
"""

from __future__ import annotations

from typing import Any

from restmq import jsontext, validation
from restmq.core import QueueEngine
from restmq.errors import InvalidArgument

EMPTY = {"error": "empty queue"}
COMMANDS = ("add", "get", "take", "del")
CONSUMING = ("get", "take")  # the commands that read or remove messages; the rest write


async def dispatch(engine: QueueEngine, command: Any, default_queue: str | None = None) -> dict:
    """Run one JSON-protocol command; ``default_queue`` comes from ``/queue/<name>``."""
    if not isinstance(command, dict):
        raise InvalidArgument('a command is a JSON object such as {"cmd": "take", "queue": "q"}')
    cmd = command.get("cmd")
    if not cmd:
        raise InvalidArgument('the command has no "cmd" field; use one of ' + ", ".join(COMMANDS))
    queue = command.get("queue", default_queue)
    if cmd not in COMMANDS:
        raise InvalidArgument(
            f"null resultset: unknown command {str(cmd)[:40]!r}; use one of " + ", ".join(COMMANDS)
        )
    queue = validation.queue_name(queue)

    if cmd == "add":
        if "value" not in command:
            raise InvalidArgument("the add command needs a value")
        ttl = validation.ttl_seconds(command.get("ttl"))
        value = jsontext.as_text(command["value"], null="the add command needs a value")
        key = await engine.add(queue, value, ttl)
        return {"queue": queue, "value": command["value"], "key": key}
    if cmd == "get":
        message = await engine.peek(queue)
        if message is None:
            return dict(EMPTY)
        return {"queue": queue, "value": message.value, "key": message.key, "count": message.count}
    if cmd == "take":
        message = await engine.pop(queue)
        if message is None:
            return dict(EMPTY)
        return {"queue": queue, "value": message.value, "key": message.key}
    # del
    key = command.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidArgument("the del command needs the key of a message")
    deleted = await engine.delete(queue, key)
    return {"queue": queue, "key": key, "deleted": deleted}
