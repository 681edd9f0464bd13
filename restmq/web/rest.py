"""The REST routes: ``/`` and ``/q/<queue>`` (produce, pop, batch pop, purge)."""

from __future__ import annotations

from typing import Any

from restmq import jsontext, validation
from restmq.core import Message
from restmq.errors import InvalidArgument
from restmq.web.base import ApiError, BaseHandler
from restmq.web.pages import queue_list_page


def message_json(message: Message) -> dict[str, Any]:
    return {"key": message.key, "value": message.value, "count": message.count}


class ProducerMixin:
    """Reading one message (form ``value``/``msg``, or a JSON body) and answering its key."""

    #: which form field wins when a client sends both (the original's choice per route)
    value_fields: tuple[str, ...] = ("value", "msg")

    def form_value(self) -> str:
        for name in self.value_fields:
            value = self.arg(name)
            if value:  # an empty field counts as missing, as it did in the original
                return value
        raise InvalidArgument("a message is required: send it as value=... (or msg=...)")

    def answer_key(self, key: str, callback: str | None) -> None:
        # The original answers the bare key (``test:1``); under JSONP it is quoted.
        if callback:
            self.answer(key, callback=callback)
        else:
            self.answer_text(key + "\r\n")


class IndexHandler(ProducerMixin, BaseHandler):
    """``/``: the original's all-in-one route. GET pops ``queue``; POST adds to it."""

    access = {"GET": "rest:consumer", "POST": "rest:producer"}

    async def get(self) -> None:
        queue = self.arg("queue")
        if queue is None:
            self.redirect("/static/index.html")
            return
        callback = self.callback()
        message = await self.engine.pop(validation.queue_name(queue))
        if message is None:
            raise ApiError(404, f"queue {queue!r} is empty")
        self.answer(message_json(message), callback=callback)

    async def post(self) -> None:
        callback = self.callback()
        queue = validation.queue_name(self.arg("queue"))
        value = self.form_value()
        ttl = validation.ttl_seconds(self.arg("ttl"))
        self.answer_key(await self.engine.add(queue, value, ttl), callback)


class QueueHandler(ProducerMixin, BaseHandler):
    """``/q/<queue>``: GET pops (``?n=`` for a batch), POST adds, DELETE purges."""

    access = {"GET": "rest:consumer", "POST": "rest:producer", "DELETE": "rest:producer"}
    value_fields = ("msg", "value")  # the original stored ``msg or value`` here

    async def get(self, queue: str) -> None:
        if not queue:
            await queue_list_page(self)
            return
        queue = validation.queue_name(queue)
        callback = self.callback()
        n = self.arg("n")
        if n is not None:
            messages = await self.engine.pop_many(queue, validation.batch_size(n))
            self.answer([message_json(m) for m in messages], callback=callback)
            return
        message = await self.engine.pop(queue)
        if message is None:
            self.set_status(204)
            self.clear_header("Content-Type")
            self.finish()
            return
        self.answer(message_json(message), callback=callback)

    async def post(self, queue: str) -> None:
        queue = validation.queue_name(queue)
        callback = self.callback()
        if not self.is_json_body():
            ttl = validation.ttl_seconds(self.arg("ttl"))
            self.answer_key(await self.engine.add(queue, self.form_value(), ttl), callback)
            return
        keys = await self._post_json(queue)
        if isinstance(keys, list):
            self.answer(keys, callback=callback)  # "values": the keys as a JSON array
        else:
            self.answer_key(keys, callback)  # "value": the bare key, as for a form

    async def _post_json(self, queue: str) -> str | list[str]:
        body = self.json_body()
        if not isinstance(body, dict) or ("value" in body) == ("values" in body):
            raise InvalidArgument('send a JSON object with "value": ... or "values": [...]')
        ttl = validation.ttl_seconds(body.get("ttl", self.arg("ttl")))
        if "values" in body:
            values = body["values"]
            if not isinstance(values, list) or not values:
                raise InvalidArgument('"values" must be a non-empty list')
            return await self.engine.add_many(queue, [jsontext.as_text(v) for v in values], ttl)
        return await self.engine.add(queue, jsontext.as_text(body["value"]), ttl)

    async def delete(self, queue: str) -> None:
        queue = validation.queue_name(queue)
        callback = self.callback()
        purged = await self.engine.purge(queue)
        # The original answered the DEL count of the list key: 1 if anything was pending.
        self.answer({"queue": queue, "status": 1 if purged else 0}, callback=callback)
