"""The REST routes: ``/`` and ``/q/<queue>`` (produce, pop, batch pop, purge; on
``/q/<queue>`` also leases, acks, extend/release and long polling).

Each handler reads HTTP, calls one operation and renders its result. Where the
routes differ (the original's choices, kept for its clients) the table below
says so; nothing else in this module decides a route's answer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from restmq.access import acl
from restmq.errors import EmptyQueue, InvalidArgument
from restmq.operations import jsontext
from restmq.operations.results import Added
from restmq.web import idempotency, shapes
from restmq.web.connection import cyclone_fixes
from restmq.web.handlers.base import BaseHandler
from restmq.web.handlers.pages import queue_list_page

NOT_FOUND = "404 with an error body"
NO_CONTENT = "204 with no body"


@dataclass(frozen=True)
class Route:
    """How one REST route differs from the others."""

    path: str  # as error messages name it
    get_arguments: tuple[str, ...]  # the only arguments its GET (a pop) accepts
    on_empty: str  # what its GET answers when the queue is empty
    value_fields: tuple[str, ...]  # the POST form fields of a message; the first given wins
    missing_value: str  # the POST error when no message was sent

    @functools.cached_property
    def accepted(self) -> frozenset[str]:
        """Every argument its GET takes: its own and the ignored ones."""
        return frozenset(self.get_arguments + IGNORED)


#: Accepted by every GET and never read: jQuery's JSONP cache-buster.
IGNORED = ("_",)

INDEX = Route(
    path="/",
    get_arguments=("queue", "callback"),
    on_empty=NOT_FOUND,
    value_fields=("value", "msg"),
    missing_value="a message is required: send it as value=... (or msg=...)",
)
QUEUE = Route(
    path="/q/<queue>",
    get_arguments=("callback", "n", "lease", "wait"),
    on_empty=NO_CONTENT,
    value_fields=("msg", "value"),  # the original stored ``msg or value`` here
    missing_value=(
        "a message is required: send it as value=... (or msg=...), or as a JSON body "
        '{"value": ...}; a JSON body needs Content-Type: application/json'
    ),
)


class RestHandler(BaseHandler):
    """Reads arguments and messages as its ``rules`` (a row of the table above) say."""

    rules: Route

    def refuse_unknown_arguments(self) -> None:
        """A GET that may pop takes no argument it does not know, so that a typo or a
        newer client's option is refused rather than ignored while a message is taken."""
        arguments = self.request.arguments
        if not arguments or arguments.keys() <= self.rules.accepted:
            return
        known = self.rules.get_arguments
        unknown = sorted(arguments.keys() - self.rules.accepted)
        raise InvalidArgument(
            f"unknown argument {unknown[0][:40]!r} for GET {self.rules.path}; "
            f"known: {', '.join(known)}"
        )

    def form_value(self) -> str | bytes | memoryview:
        for name in self.rules.value_fields:
            value = self.message_arg(name)
            if value:  # an empty field counts as missing, as it did in the original
                self.let_body_go()
                return value
        raise InvalidArgument(self.rules.missing_value)

    def idempotency_key(self) -> str | None:
        """The add's Idempotency-Key header (restmq.web.idempotency); None without one."""
        return idempotency.key_from(self.request.headers.get_list)

    def mark_replayed(self, added: Added) -> None:
        """A repeated idempotent add answers as the first did, plus this header."""
        if added.replayed:
            self.set_header(idempotency.REPLAYED, "true")

    def answer_key(self, key: str, callback: str | None) -> None:
        # The original answers the bare key (``test:1``); under JSONP it is quoted.
        if callback:
            self.answer(key, callback=callback)
        else:
            self.answer_text(key + "\r\n")

    def answer_empty(self, empty: EmptyQueue) -> None:
        if self.rules.on_empty == NO_CONTENT:
            self.set_status(204)
            self.clear_header("Content-Type")
            self.finish()
            return
        raise empty  # NOT_FOUND: as_api_error's 404

    async def answer_pop(self, queue: str, callback: str | None) -> None:
        """Pop one message and answer it, or answer as the route does for an empty queue."""
        try:
            message = await self.operations.pop(queue)
        except EmptyQueue as empty:
            self.answer_empty(empty)
            return
        self.answer(shapes.message(message), callback=callback)


class IndexHandler(RestHandler):
    """``/``: the original's all-in-one route. GET pops ``queue``; POST adds to it."""

    access = {"GET": acl.CONSUMER, "POST": acl.PRODUCER}
    rules = INDEX

    async def get(self) -> None:
        self.refuse_unknown_arguments()
        callback = self.callback()  # checked even for the redirect: a bad one is refused
        queue = self.arg("queue")
        if queue is None:
            self.redirect("/static/index.html")
            return
        await self.answer_pop(queue, callback)

    async def post(self) -> None:
        callback = self.callback()
        added = await self.operations.add(
            self.arg("queue"),
            self.form_value(),
            self.arg("ttl"),
            delay=self.arg("delay"),
            idempotency_key=self.idempotency_key(),
        )
        self.mark_replayed(added)
        self.answer_key(added.key, callback)


class QueueHandler(RestHandler):
    """``/q/<queue>``: GET pops (``?n=`` for a batch, ``?lease=`` to lease, ``?wait=`` to
    long-poll), POST adds (with ``receipt``: extends or releases a lease), DELETE purges
    (with ``receipt``: acks)."""

    access = {"GET": acl.CONSUMER, "POST": acl.PRODUCER, "DELETE": acl.PRODUCER}
    rules = QUEUE

    def required_section(self) -> str | None:
        # An ack (DELETE) or an extend/release (POST) with a receipt consumes.
        if self.request.method in ("DELETE", "POST") and "receipt" in self.request.arguments:
            return acl.CONSUMER
        return super().required_section()

    def client_gone(self) -> bool:
        return cyclone_fixes.client_is_gone(self)

    async def get(self, queue: str) -> None:
        if not queue:
            await queue_list_page(self)
            return
        self.refuse_unknown_arguments()
        callback = self.callback()
        n = self.arg("n")
        lease, wait = self.arg("lease"), self.arg("wait")
        if lease is not None or wait is not None:
            await self._take(queue, n, lease, wait, callback)
            return
        if n is not None:
            messages = await self.operations.pop_many(queue, n)
            self.answer_json_text(shapes.messages_json(messages), callback=callback)
            return
        await self.answer_pop(queue, callback)

    async def _take(
        self, queue: str, n: str | None, lease: str | None, wait: str | None, callback: str | None
    ) -> None:
        """A leased take, a long poll, or both. A long poll that got nothing is a 204,
        with or without ``n``."""
        messages = await self.operations.take(queue, n, lease, wait, gone=self.client_gone)
        if self.client_gone():
            cyclone_fixes.mark_finished(self)  # nobody to answer; what it took went back
            return
        if not messages and (wait is not None or n is None):
            self.answer_empty(EmptyQueue(queue))
        elif n is not None:
            self.answer([shapes.message(m) for m in messages], callback=callback)
        else:
            self.answer(shapes.message(messages[0]), callback=callback)

    async def post(self, queue: str) -> None:
        callback = self.callback()
        if "receipt" in self.request.arguments:  # extend or release a lease, not an add
            changed = await self.operations.change_lease(
                queue, self.arg("receipt"), self.arg("lease")
            )
            self.answer(shapes.lease_changed(changed), callback=callback)
            return
        key = self.idempotency_key()
        if not self.is_json_body():
            added = await self.operations.add(
                queue,
                self.form_value(),
                self.arg("ttl"),
                delay=self.arg("delay"),
                idempotency_key=key,
            )
            self.mark_replayed(added)
            self.answer_key(added.key, callback)
            return
        body = self.json_message()
        if not isinstance(body, dict) or ("value" in body) == ("values" in body):
            raise InvalidArgument('send a JSON object with "value": ... or "values": [...]')
        ttl = body.get("ttl", self.arg("ttl"))
        delay = body.get("delay", self.arg("delay"))
        if "values" not in body:  # "value": the bare key, as for a form
            # held as UTF-8 from here on (text may take up to 4 bytes a character)
            value = jsontext.as_utf8(body.pop("value"))
            added = await self.operations.add(queue, value, ttl, delay=delay, idempotency_key=key)
            self.mark_replayed(added)
            self.answer_key(added.key, callback)
            return
        values = body["values"]
        if not isinstance(values, list) or not values:
            raise InvalidArgument('"values" must be a non-empty list')
        texts = [jsontext.as_utf8(v) for v in values]
        values.clear()  # each value is held as UTF-8 only, from here on
        added = await self.operations.add_many(queue, texts, ttl, delay=delay, idempotency_key=key)
        self.mark_replayed(added)
        self.answer(added.keys, callback=callback)  # "values": the keys as a JSON array

    async def delete(self, queue: str) -> None:
        """Without ``receipt``: purge. With one: ack it (409 when its lease is gone); with
        several: ack them all, a list of results."""
        callback = self.callback()
        receipts = self.all_args("receipt")
        if not receipts:
            self.answer(shapes.purged(await self.operations.purge(queue)), callback=callback)
        elif len(receipts) == 1:
            acked = await self.operations.ack_one(queue, receipts[0])
            self.answer(shapes.acked(acked), callback=callback)
        else:
            results = await self.operations.ack(queue, receipts)
            self.answer([shapes.acked(result) for result in results], callback=callback)
