"""A message as the broker hands it out, bound to the client that can settle its lease."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from restmq.client.errors import NotLeased, RestMQError


class Settler(Protocol):
    """What a leased message needs of its client (a :class:`restmq.client.Client`)."""

    def ack(self, queue: str, receipt: str) -> None: ...

    def extend(self, queue: str, receipt: str, seconds: int) -> None: ...

    def release(self, queue: str, receipt: str) -> None: ...


@dataclass
class Message:
    """One message: ``queue``, ``key`` (``jobs:5``), ``value`` (always text, as stored),
    ``count`` (how often it was peeked), and for a message taken under a lease its
    ``receipt`` (``jobs:5@1``), ``deliveries`` and ``lease`` (seconds). ``answer`` is the
    broker's JSON object for it as it came, fields this client does not know included.

    >>> with client.lease("jobs", 30) as message:   # doctest: +SKIP
    ...     print(message.value, message.receipt)
    """

    queue: str
    key: str
    value: str
    count: int = 0
    receipt: str | None = None
    deliveries: int | None = None
    lease: int | None = None
    settled: bool = field(default=False, compare=False)
    answer: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _client: Settler | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_answer(cls, queue: str, answer: Any, client: Settler) -> Message:
        """A message from the broker's JSON object; RestMQError when it is not one."""
        if not isinstance(answer, dict) or "key" not in answer or "value" not in answer:
            raise RestMQError(f"the broker sent something that is not a message: {answer!r:.80}")
        return cls(
            queue=queue,
            key=answer["key"],
            value=answer["value"],
            count=answer.get("count", 0),
            receipt=answer.get("receipt"),
            deliveries=answer.get("deliveries"),
            lease=answer.get("lease"),
            answer=answer,
            _client=client if answer.get("receipt") else None,
        )

    @property
    def leased(self) -> bool:
        return self.receipt is not None

    def ack(self) -> None:
        """Acknowledge: the broker deletes the message. LeaseGone when its lease is gone.

        >>> client.lease("jobs", 30).message.ack()   # doctest: +SKIP
        """
        self._settler("ack").ack(self.queue, self._receipt())
        self.settled = True

    def release(self) -> None:
        """Give the message back: it goes to the head of its queue at once."""
        self._settler("release").release(self.queue, self._receipt())
        self.settled = True

    def extend(self, seconds: int) -> None:
        """Make the lease end ``seconds`` (1-43200) from now."""
        self._settler("extend").extend(self.queue, self._receipt(), seconds)
        self.lease = seconds

    def _settler(self, verb: str) -> Settler:
        if self._client is None or self.receipt is None:
            raise NotLeased(
                f"cannot {verb} {self.key}: it was not taken under a lease (a pop or a plain "
                "stream removes the message; take it with lease() or stream(lease=...))"
            )
        return self._client

    def _receipt(self) -> str:
        assert self.receipt is not None
        return self.receipt
