"""MemoryBudget: one limit on the bytes the broker holds for clients at a time.

Request bodies being received and the backlogs of slow streaming consumers both
draw on it, so many concurrent large requests or many slow consumers cannot take
the broker's memory beyond ``--max-buffered`` together.
"""

from __future__ import annotations


class MemoryBudget:
    """Bytes reserved against a fixed limit; reservations that do not fit are refused."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a memory budget must be greater than 0 bytes")
        self.limit = limit
        self.used = 0

    @property
    def free(self) -> int:
        return self.limit - self.used

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` bytes if they fit; False (and nothing reserved) otherwise."""
        if n < 0:
            raise ValueError("cannot reserve a negative number of bytes")
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def reserve_anyway(self, n: int) -> None:
        """Count ``n`` bytes already held (a copy made of an admitted body), even
        beyond the limit: later reservations wait until they are released."""
        if n < 0:
            raise ValueError("cannot reserve a negative number of bytes")
        self.used += n

    def release(self, n: int) -> None:
        """Give back ``n`` bytes reserved earlier."""
        if n < 0:
            raise ValueError("cannot release a negative number of bytes")
        # Never below zero: a release that does not match a reservation is a bug,
        # but it must not hand out memory that is not there.
        self.used = max(0, self.used - n)

    def __repr__(self) -> str:
        return f"<MemoryBudget {self.used}/{self.limit} bytes>"
