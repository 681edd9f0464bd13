"""A Python client for RestMQ: push, pop, lease, consume and stream over HTTP.

>>> from restmq.client import Client
>>> with Client("http://127.0.0.1:8888") as client:   # doctest: +SKIP
...     client.push("jobs", "hello")
...     with client.lease("jobs", 30) as message:
...         print(message.value)                        # acked when the block ends

It loads no broker module: it needs only httpx and httpx-sse. See docs/client.rst.
"""

from restmq.client.client import DEFAULT_URL, Client
from restmq.client.errors import (
    AccessDenied,
    BadRequest,
    BrokerUnavailable,
    IdempotencyConflict,
    LeaseGone,
    NotLeased,
    OutcomeUnknown,
    RestMQError,
)
from restmq.client.leasing import Lease
from restmq.client.message import Message
from restmq.client.stream import Stream

__all__ = [
    "DEFAULT_URL",
    "AccessDenied",
    "BadRequest",
    "BrokerUnavailable",
    "Client",
    "IdempotencyConflict",
    "Lease",
    "LeaseGone",
    "Message",
    "NotLeased",
    "OutcomeUnknown",
    "RestMQError",
    "Stream",
]
