"""Queue settings and figures: ``/p/<q>`` (policy), ``/control/<q>`` (start/stop), ``/stats/``."""

from __future__ import annotations

from restmq import validation
from restmq.errors import InvalidArgument
from restmq.web.base import ApiError, BaseHandler


class PolicyHandler(BaseHandler):
    """``/p/<queue>``: GET the delivery policy, POST ``policy=broadcast|roundrobin``."""

    access = {"GET": "rest:consumer", "POST": "rest:producer"}

    async def get(self, queue: str) -> None:
        queue = validation.queue_name(queue)
        callback = self.callback()
        policy = await self.engine.get_policy(queue)
        self.answer({"queue": queue, "value": policy}, callback=callback)

    async def post(self, queue: str) -> None:
        queue = validation.queue_name(queue)
        callback = self.callback()
        policy = self.arg("policy")
        if not policy:
            raise InvalidArgument("policy is required: policy=broadcast or policy=roundrobin")
        await self.engine.set_policy(queue, policy)
        if callback:
            self.answer("OK", callback=callback)
        else:
            self.answer_text("OK\r\n")


class ControlHandler(BaseHandler):
    """``/control/<queue>``: GET the status; POST ``status=start|stop``. ``/control/``: all."""

    access = {"GET": "rest:consumer", "POST": "rest:producer"}

    async def get(self, queue: str) -> None:
        callback = self.callback()
        redis = self.broker.describe_storage()
        if not queue:
            stats = await self.engine.stats()
            queues = {s.name: {"queue": s.name, "status": s.status} for s in stats}
            self.answer({"redis": redis, "queues": queues, "count": len(queues)}, callback=callback)
            return
        queue = validation.queue_name(queue)
        status = await self.engine.get_status(queue)
        self.answer(
            {"redis": redis, "queue": queue, "status": {"queue": queue, "status": status}},
            callback=callback,
        )

    async def post(self, queue: str) -> None:
        queue = validation.queue_name(queue)
        callback = self.callback()
        word = self.arg("status")
        if word not in ("start", "stop"):
            raise ApiError(400, f"invalid status: {word}; use status=start or status=stop")
        status = await self.engine.set_status(queue, word == "start")
        self.answer({"stat": {"queue": queue, "status": status}}, callback=callback)


class StatsHandler(BaseHandler):
    """``/stats/<queue>``: a queue's length. ``/stats/``: every queue, and readiness."""

    access = {"GET": "rest:consumer"}

    async def get(self, queue: str) -> None:
        callback = self.callback()
        if queue:
            queue = validation.queue_name(queue)
        self.answer(await self.broker.stats(queue), callback=callback)
