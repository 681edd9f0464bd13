"""``/queue`` and ``/queue/<name>``: the JSON protocol over HTTP."""

from __future__ import annotations

import json

from restmq import validation
from restmq.dispatch import dispatch
from restmq.errors import InvalidArgument
from restmq.web.base import BaseHandler


class JsonProtocolHandler(BaseHandler):
    """POST a command as form field ``body`` (or ``msg``), or as an ``application/json`` body."""

    # The original left GET open; every command may produce, so POST needs producer rights.
    access = {"GET": "rest:consumer", "POST": "rest:producer"}

    def get(self, queue: str | None = None) -> None:
        self.redirect("/static/help.html")

    async def post(self, queue: str | None = None) -> None:
        default_queue = validation.queue_name(queue) if queue else None
        if self.is_json_body():
            command = self.json_body()
        else:
            text = self.arg("body")
            if text is None:
                text = self.arg("msg")
            if not text:
                raise InvalidArgument(
                    "send the command as form field body=... or as an application/json body, "
                    'e.g. {"cmd": "take", "queue": "q"}'
                )
            try:
                command = json.loads(text)
            except ValueError as exc:
                raise InvalidArgument(f"malformed JSON command: {exc}") from None
        self.answer(await dispatch(self.engine, command, default_queue))
