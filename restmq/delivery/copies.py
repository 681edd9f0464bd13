"""Copies: the record of one taken message whose copies several consumers may hold.

A message this broker took for its streaming consumers goes back to its queue only
if no consumer's peer got it: so it goes back once, when the last holder lets go of
it undelivered. Every holder (the hand-out while it runs, each consumer that keeps it
in its backlog or wrote it and waits for its peer's TCP to acknowledge it) takes the
record and releases it; only this class counts them.
"""

from __future__ import annotations

from restmq.engine.messages import TakenMessage


class Copies:
    """How many holders keep a copy of ``message``, and whether any delivered it."""

    __slots__ = ("_holders", "_written", "message")

    def __init__(self, message: TakenMessage) -> None:
        self.message = message
        self._holders = 0
        self._written = False

    @property
    def written(self) -> bool:
        """Some consumer's peer got it (see release): it counts as delivered."""
        return self._written

    def take(self) -> None:
        """One more holder keeps a copy."""
        self._holders += 1

    def release(self, written: bool = False) -> bool:
        """A holder let go of its copy (``written``: after its peer's TCP acknowledged
        it, or, where that cannot be known, after writing it to its socket); True when
        the message must go back to its queue now."""
        self._holders -= 1
        if written:
            self._written = True
        return self._holders == 0 and not self._written
