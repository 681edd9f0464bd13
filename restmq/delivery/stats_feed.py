"""StatsFeed: every queue's figures, pushed to whoever watches them (the dashboard).

One stats call per tick serves every watcher, however many there are, and the
feed ticks only while someone watches. A watcher gets the figures as soon as it
joins and then again only when they change; a storage outage is told once, and
the figures follow as soon as it is over. Stopping the feed ends every watch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from restmq.errors import StorageUnavailable

if TYPE_CHECKING:
    from restmq.operations.results import AllStats

log = Logger(namespace="restmq.stats")


class StatsWatcher(Protocol):
    """What the feed calls; a front end renders each call in its own wire format."""

    def figures(self, stats: AllStats) -> None:
        """The current figures: on joining, then after each change."""

    def unavailable(self, reason: str) -> None:
        """Storage cannot be read; figures follow when it can again."""

    def heartbeat(self) -> None:
        """Nothing changed for a while: a sign of life, for proxies that drop idle streams."""

    def end(self, reason: str) -> None:
        """The feed stopped (the broker is stopping); no call follows."""


class StatsFeed:
    """Reads the figures every ``interval`` seconds while anyone watches."""

    def __init__(
        self,
        read: Callable[[], Awaitable[AllStats]],
        reactor: IReactorTime,
        *,
        interval: float = 0.5,
        heartbeat: float = 15.0,
    ) -> None:
        self._read = read
        self.reactor = reactor
        self.interval = interval
        self.heartbeat_interval = heartbeat
        self._watchers: list[StatsWatcher] = []
        self._loop: task.LoopingCall | None = None
        self._last: AllStats | None = None  # what every watcher saw last
        self._outage: str | None = None  # why storage could not be read, while it cannot
        self._quiet = 0.0  # seconds since the watchers were last sent anything
        self._stopped = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def watch(self, watcher: StatsWatcher) -> None:
        """Add ``watcher``; it gets the latest figures at once if the feed has them."""
        if self._stopped:
            watcher.end("the broker is stopping")
            return
        self._watchers.append(watcher)
        if self._outage is not None:
            watcher.unavailable(self._outage)
        elif self._last is not None:
            watcher.figures(self._last)
        if self._loop is None:
            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=True)

    def unwatch(self, watcher: StatsWatcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        if not self._watchers:
            self._stop_ticking()

    def stop(self) -> None:
        """End every watch; later watchers are ended as they come."""
        self._stopped = True
        watchers, self._watchers = self._watchers, []
        self._stop_ticking()
        for watcher in watchers:
            watcher.end("the broker is stopping")

    def _stop_ticking(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        # Nobody saw these: the next watcher must not be sent stale figures.
        self._last = None
        self._outage = None
        self._quiet = 0.0

    def _tick(self) -> defer.Deferred:
        # The loop waits for this Deferred, so ticks never overlap. A failure must
        # not escape: it would end the LoopingCall for good.
        loop = self._loop
        d = defer.ensureDeferred(self._read())
        d.addCallbacks(lambda stats: self._read_done(loop, stats), lambda f: self._failed(loop, f))
        return d

    def _read_done(self, loop: task.LoopingCall | None, stats: AllStats) -> None:
        if loop is not self._loop:
            return  # read for watchers who have all left since
        if self._outage is not None:
            log.info("stats can be read again")
            self._outage = None
        if stats == self._last:
            self._nothing_new()
            return
        self._last = stats
        self._quiet = 0.0
        for watcher in list(self._watchers):
            watcher.figures(stats)

    def _failed(self, loop: task.LoopingCall | None, failure) -> None:
        if loop is not self._loop:
            return
        if failure.check(StorageUnavailable):
            reason = failure.getErrorMessage()
        else:
            log.failure("reading the stats for the dashboard failed", failure)
            reason = "the stats could not be read; see the broker log"
        if self._outage is not None:
            self._nothing_new()  # told once per outage
            return
        log.warn("stats cannot be read: {reason}", reason=reason)
        self._outage = reason
        self._last = None  # so that the figures are sent again once they can be read
        self._quiet = 0.0
        for watcher in list(self._watchers):
            watcher.unavailable(reason)

    def _nothing_new(self) -> None:
        self._quiet += self.interval
        if self._quiet >= self.heartbeat_interval:
            self._quiet = 0.0
            for watcher in list(self._watchers):
                watcher.heartbeat()
