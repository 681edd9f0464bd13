"""Pending: the work a delivery component started and has not seen finish yet.

Drains, requeues and releases run on their own; a stop must wait for them before
the Redis connection closes, or what they carry back would be lost.
"""

from __future__ import annotations

from twisted.internet import defer


class Pending:
    """Deferreds under way, tracked until they fire."""

    def __init__(self) -> None:
        # one Deferred per piece of work, fired when it ends: waiting on these leaves
        # the work's own result (or failure) to whoever else waits for it
        self._ends: set[defer.Deferred] = set()

    def __len__(self) -> int:
        return len(self._ends)

    def track(self, d: defer.Deferred) -> defer.Deferred:
        """Remember ``d`` until it fires; returns it."""
        end: defer.Deferred = defer.Deferred()
        self._ends.add(end)

        def done(result):
            self._ends.discard(end)
            end.callback(None)
            return result

        return d.addBoth(done)

    async def settled(self) -> None:
        """Return once nothing is under way, what started meanwhile too (each piece of
        work is bounded by the Redis timeout)."""
        while self._ends:
            await defer.DeferredList(list(self._ends))
