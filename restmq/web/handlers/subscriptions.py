"""The durable subscription routes: ``/q/<queue>/subscriptions`` (GET lists them) and
``/q/<queue>/subscriptions/<name>`` (PUT creates one, DELETE ends it).

Creating and ending change what adds to the queue do, as a setting does: they need
``[rest:producer]``; listing reads a setting: ``[rest:consumer]``.
"""

from __future__ import annotations

from restmq.access import acl
from restmq.web import shapes
from restmq.web.handlers.base import ApiError, BaseHandler

#: the routes' patterns; a queue name holds no ``/`` (see restmq.web.app)
SUBSCRIPTIONS = r"/q/(?P<queue>[^/]*)/subscriptions"
SUBSCRIPTION = r"/q/(?P<queue>[^/]*)/subscriptions/(?P<name>[^/]*)"


class SubscriptionsHandler(BaseHandler):
    """GET: ``{"queue": q, "subscriptions": [name, ...]}``, sorted."""

    access = {"GET": acl.CONSUMER}

    async def get(self, queue: str) -> None:
        names = await self.operations.subscriptions(queue)
        self.answer(shapes.subscriptions(queue, names))


class SubscriptionHandler(BaseHandler):
    """PUT: 201 when created, 200 when it was there; DELETE: 200, or 404 when there
    was no such subscription. Both answer the subscription and its queue."""

    access = {"PUT": acl.PRODUCER, "DELETE": acl.PRODUCER}

    async def put(self, queue: str, name: str) -> None:
        created = await self.operations.subscribe(queue, name)
        self.answer(shapes.subscription(created), status=201 if created.changed else 200)

    async def delete(self, queue: str, name: str) -> None:
        ended = await self.operations.unsubscribe(queue, name)
        if not ended.changed:
            raise ApiError(404, f"queue {ended.queue} has no subscription {ended.name}")
        self.answer(shapes.subscription(ended))
