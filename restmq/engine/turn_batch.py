"""Group commit: the calls of one reactor turn, run as one.

Under load a broker reads many requests in one reactor turn. Those that do the same
independent thing to one queue (acks, say) can go to Redis as one script call: each
one stays atomic, and the per-call cost (encoding, a round trip, the reply's parse,
the Deferreds) is paid once per turn instead of once per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.python import failure

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Group(Generic[Item]):
    """What was submitted for one key this turn: the items, and who waits for which."""

    __slots__ = ("items", "waiting")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.waiting: list[tuple[defer.Deferred, int, int]] = []  # answer, start, end


class TurnBatcher(Generic[Item, Result]):
    """Gathers the items submitted for one key during a reactor turn and runs them with
    one ``run(key, items)`` call, which returns one result per item, in order. The call
    starts once the turn is over (the reactor's next iteration), or at once when a group
    reaches ``most`` items, or when ``flush(key)`` asks for it: a caller about to send
    something else for that key flushes first, so Redis sees the calls in their order.

    Each submitter gets its own items' results, or the failure of the call they shared.
    """

    def __init__(
        self,
        reactor: Any,
        run: Callable[[str, list[Item]], Awaitable[list[Result]]],
        most: int,
    ) -> None:
        self.reactor = reactor
        self.run = run
        self.most = most
        self._groups: dict[str, _Group[Item]] = {}
        self._timer = None

    def submit(self, key: str, items: Sequence[Item]) -> defer.Deferred:
        """Results for ``items`` (a list, in order), once the call that carries them answers."""
        group = self._groups.get(key)
        while group is not None and len(group.items) + len(items) > self.most:
            # Full: send it. Its failure may be answered at once, and a caller answered
            # may submit again (a new group): look again rather than overwrite it.
            self.flush(key)
            group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            if self._timer is None:
                self._timer = self.reactor.callLater(0, self._end_of_turn)
        answer = defer.Deferred()
        start = len(group.items)
        group.items.extend(items)
        group.waiting.append((answer, start, len(group.items)))
        if len(group.items) >= self.most:
            self.flush(key)
        return answer

    def flush(self, key: str) -> None:
        """Send what waits for ``key`` now (nothing when nothing does)."""
        group = self._groups.pop(key, None)
        if group is None:
            return
        if not self._groups and self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._timer = None
        try:
            done = defer.ensureDeferred(self.run(key, group.items))
        except Exception:
            done = defer.fail()  # a ``run`` that raises before it awaits anything
        done.addCallbacks(self._answer_each, self._fail_each, (group,), None, (group,), None)

    def flush_all(self) -> None:
        """Send every group now (a stop: nothing may stay behind)."""
        for key in list(self._groups):
            self.flush(key)

    def _end_of_turn(self) -> None:
        self._timer = None
        self.flush_all()

    @staticmethod
    def _answer_each(results: list[Result], group: _Group) -> None:
        for answer, start, end in group.waiting:
            answer.callback(results[start:end])

    @staticmethod
    def _fail_each(reason: failure.Failure, group: _Group) -> None:
        for answer, _, _ in group.waiting:
            answer.errback(reason)
