"""``/queue`` and ``/queue/<name>``: the JSON protocol over HTTP (commands: json_commands.py)."""

from __future__ import annotations

from typing import Any

from restmq.access import acl
from restmq.errors import InvalidArgument
from restmq.operations import jsontext, validation
from restmq.web import idempotency
from restmq.web.handlers.base import BaseHandler
from restmq.web.handlers.json_commands import REPLAYED_FIELD, dispatch, required_section


class JsonProtocolHandler(BaseHandler):
    """POST a command as form field ``body`` (or ``msg``), or as an ``application/json`` body.

    POST is checked per command, as XML-RPC checks per method, once the command is read.
    """

    access = {"GET": acl.CONSUMER}

    def get(self, queue: str | None = None) -> None:
        self.redirect("/static/help.html")

    async def post(self, queue: str | None = None) -> None:
        try:
            command = self._command()
        except InvalidArgument:
            # An unreadable command could be anything: only a producer learns why.
            await self.broker.check_access_async(self.request, acl.PRODUCER)
            raise
        await self.broker.check_access_async(self.request, required_section(command))
        # The path's queue is part of the route: refused when malformed, even unused.
        default_queue = validation.queue_name(queue) if queue else None
        answer = await dispatch(self.operations, command, default_queue)
        if answer.get(REPLAYED_FIELD) is True:  # an add answered again for its key
            self.set_header(idempotency.REPLAYED, "true")
        self.answer(answer)

    def _command(self) -> Any:
        if self.is_json_body():
            return self.json_body()
        text = self.arg("body")
        if text is None:
            text = self.arg("msg")
        if not text:
            raise InvalidArgument(
                "send the command as form field body=... or as an application/json body, "
                'e.g. {"cmd": "take", "queue": "q"}'
            )
        return jsontext.decode(text, what="JSON command")
