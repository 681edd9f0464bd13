"""Queue settings and figures: ``/p/<q>`` (policy), ``/control/<q>`` (start/stop), ``/stats/``."""

from __future__ import annotations

from restmq.access import acl
from restmq.errors import InvalidStatus
from restmq.web import shapes
from restmq.web.connection import held_response
from restmq.web.handlers import stats_stream
from restmq.web.handlers.base import BaseHandler


class PolicyHandler(BaseHandler):
    """``/p/<queue>``: GET the delivery policy, max_deliveries and max_length; POST
    ``policy=broadcast|roundrobin``, ``max_deliveries=N`` and/or ``max_length=N``."""

    access = {"GET": acl.CONSUMER, "POST": acl.PRODUCER}

    async def get(self, queue: str) -> None:
        callback = self.callback()
        self.answer(shapes.policy(await self.operations.policy(queue)), callback=callback)

    async def post(self, queue: str) -> None:
        callback = self.callback()
        await self.operations.configure(
            queue, self.arg("policy"), self.arg("max_deliveries"), self.arg("max_length")
        )
        # The original answers a bare OK; under JSONP it is quoted.
        if callback:
            self.answer("OK", callback=callback)
        else:
            self.answer_text("OK\r\n")


class ControlHandler(BaseHandler):
    """``/control/<queue>``: GET the status; POST ``status=start|stop``. ``/control/``: all.

    A status word other than start/stop is answered as the original did: 400 with
    ``{"stat": "invalid status: X"}`` rather than the usual ``{"error": ...}``.
    """

    access = {"GET": acl.CONSUMER, "POST": acl.PRODUCER}

    async def get(self, queue: str) -> None:
        callback = self.callback()
        if not queue:
            self.answer(shapes.statuses(await self.operations.all_stats()), callback=callback)
            return
        status = await self.operations.status(queue)
        storage = self.operations.describe_storage()
        self.answer(shapes.status(storage, status), callback=callback)

    async def post(self, queue: str) -> None:
        callback = self.callback()
        try:
            status = await self.operations.set_status(queue, self.arg("status"))
        except InvalidStatus as invalid:
            self.answer(shapes.invalid_status(invalid.word), 400, callback=callback)
            return
        self.answer(shapes.status_set(status), callback=callback)


class StatsHandler(BaseHandler):
    """``/stats/<queue>``: a queue's length. ``/stats/``: every queue, and readiness;
    asked for ``text/event-stream``, ``/stats/`` streams the figures live instead."""

    access = {"GET": acl.CONSUMER}
    stream: stats_stream.StatsEventStream | None = None

    async def get(self, queue: str) -> None:
        callback = self.callback()
        if not queue and held_response.wants_event_stream(self):
            self.stream = stats_stream.StatsEventStream(self)
            self.stream.open()
            return
        if queue:
            answer = shapes.one_stats(await self.operations.stats(queue))
        else:
            answer = shapes.all_stats(await self.operations.all_stats())
        self.answer(answer, callback=callback)

    def on_client_gone(self) -> None:
        if self.stream is not None:
            self.stream.client_gone()
