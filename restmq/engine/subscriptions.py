"""Durable subscriptions: the engine's side (a base class of QueueEngine).

A queue's subscriptions are the names in its ``<stem>:subscriptions`` set. The add
script (restmq/engine/lua/add.lua) reads that set: while it holds names, each message
added to the queue goes to every subscription queue ``<queue>:<name>`` instead, in the
same script. Here the set is only written and read, each time with one command; the
subscription queues themselves are ordinary queues, made by their first message.

Arguments are trusted: restmq.operations checks names before they reach here.
"""

from __future__ import annotations

from restmq.engine import keys
from restmq.engine.keys import KeyLayout
from restmq.engine.messages import number, text
from restmq.storage.client import RedisClient


class SubscriptionOperations:
    """Create, end and list a queue's subscriptions, over QueueEngine's RedisClient."""

    redis: RedisClient
    layout: KeyLayout

    def _subscriptions_key(self, queue: str) -> str:
        return keys.subscriptions_key(self.layout.stem(queue))

    async def subscribe(self, queue: str, name: str) -> bool:
        """Add subscription ``name`` to ``queue``; True if it is new, False if it was
        there already. Messages added from now on also go to ``<queue>:<name>``."""
        key = self._subscriptions_key(queue)
        return number(await self.redis.execute("SADD", key, name, key=key)) == 1

    async def unsubscribe(self, queue: str, name: str) -> bool:
        """End subscription ``name`` of ``queue``; True if it was there. Its queue and
        the messages in it stay."""
        key = self._subscriptions_key(queue)
        return number(await self.redis.execute("SREM", key, name, key=key)) == 1

    async def subscriptions(self, queue: str) -> list[str]:
        """The names of ``queue``'s subscriptions, sorted."""
        key = self._subscriptions_key(queue)
        return sorted(text(name) for name in await self.redis.execute("SMEMBERS", key, key=key))
