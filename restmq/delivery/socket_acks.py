"""What a streaming consumer wrote that its peer's TCP has not acknowledged yet.

A message handed to a connection is not delivered yet: it may wait in Twisted's
write buffer, or in the kernel's send queue (which Linux grows to megabytes), until
the peer's TCP acknowledges it. Whether a message goes back to its queue (a stop,
a consumer dropped or gone) is decided by that acknowledgement, not by the write.

Each write is recorded by where it ends in the stream of bytes the consumer handed
its connection; the connection (a transport's ``Acknowledgements``) tells how many
of those bytes its peer has not acknowledged, so every record ending before that
tail is delivered. Records are settled in bulk, when they pile up or when a decision
is due, not on every write: asking the kernel costs a system call.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

#: records kept at least before asking the connection what was acknowledged
SETTLE_AT_LEAST = 256


class Acknowledgements(Protocol):
    """What a connection can tell about the bytes a consumer handed it."""

    @property
    def handed(self) -> int:
        """Bytes the consumer handed the connection so far (framing included)."""

    def unacknowledged(self) -> int | None:
        """How many of the last handed bytes (or more: never fewer) the peer's TCP
        has not acknowledged; None once the connection can no longer tell."""


class SentNotAcked(Generic[T]):
    """Records (a message's Copies, a lease's receipt) written but not known acknowledged,
    oldest first."""

    __slots__ = ("_records", "_settle_at")

    def __init__(self) -> None:
        self._records: deque[tuple[int, T]] = deque()
        self._settle_at = SETTLE_AT_LEAST

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        return (item for _, item in self._records)

    def record(self, end: int, item: T) -> bool:
        """``item`` was written up to byte ``end`` of the stream; True when the records
        have piled up enough to be worth settling now."""
        self._records.append((end, item))
        return len(self._records) >= self._settle_at

    def settle(self, acks: Acknowledgements) -> list[T] | None:
        """The records the peer has acknowledged by now, taken out; None when the
        connection cannot tell any more (the records stay as they are)."""
        unacked = acks.unacknowledged()
        if unacked is None:
            return None
        acknowledged_up_to = acks.handed - unacked
        records = self._records
        done = []
        while records and records[0][0] <= acknowledged_up_to:
            done.append(records.popleft()[1])
        # Amortised: the next settle waits until as many records came again.
        self._settle_at = max(SETTLE_AT_LEAST, 2 * len(records))
        return done

    def take_all(self) -> list[T]:
        """Empty the records: what is left was not acknowledged."""
        items = [item for _, item in self._records]
        self._records.clear()
        self._settle_at = SETTLE_AT_LEAST
        return items
