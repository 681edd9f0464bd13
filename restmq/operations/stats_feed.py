"""StatsFeed: every queue's figures, pushed to whoever watches them (the dashboard).

One stats call per tick serves every watcher, however many there are, and the
feed ticks only while someone watches. A watcher gets the figures as soon as it
joins and then again only when they change; a storage outage is told once, and
the figures follow as soon as it is over (and the log says each once). Stopping the
feed ends every watch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq.errors import StorageUnavailable
from restmq.lifecycle import Periodic
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
        self._ticks: Periodic | None = None  # while anyone watches
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
        if self._ticks is None:
            ticks = self._ticks = Periodic(
                self.reactor,
                self.interval,
                lambda: self._tick(ticks),
                what="reading the stats for the dashboard",
                log=log,
                now=True,
            )
            ticks.start()

    def unwatch(self, watcher: StatsWatcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        if not self._watchers:
            self._stop_ticking()

    def stop(self) -> defer.Deferred:
        """End every watch; later watchers are ended as they come. Fires once a read
        under way has ended."""
        self._stopped = True
        watchers, self._watchers = self._watchers, []
        stopped = self._stop_ticking()
        for watcher in watchers:
            watcher.end("the broker is stopping")
        return stopped

    def _stop_ticking(self) -> defer.Deferred:
        ticks, self._ticks = self._ticks, None
        # Nobody saw these: the next watcher must not be sent stale figures.
        self._last = None
        self._outage = None
        self._quiet = 0.0
        return ticks.stop() if ticks is not None else defer.succeed(None)

    def _tick(self, ticks: Periodic) -> defer.Deferred:
        d = defer.ensureDeferred(self._read())
        d.addCallbacks(
            lambda stats: self._read_done(ticks, stats), lambda f: self._failed(ticks, f)
        )
        return d

    def _read_done(self, ticks: Periodic, stats: AllStats) -> None:
        if ticks is not self._ticks:
            return  # read for watchers who have all left since
        self._outage = None
        if stats == self._last:
            self._nothing_new()
            return
        self._last = stats
        self._quiet = 0.0
        for watcher in list(self._watchers):
            watcher.figures(stats)

    def _failed(self, ticks: Periodic, failure: Failure) -> Failure | None:
        """Tell the watchers, once per outage; the failure goes on to the log, which
        says it once per outage too."""
        if ticks is not self._ticks:
            return None
        if failure.check(StorageUnavailable):
            reason = failure.getErrorMessage()
        else:
            reason = "the stats could not be read; see the broker log"
        if self._outage is not None:
            self._nothing_new()  # told once per outage
            return failure
        self._outage = reason
        self._last = None  # so that the figures are sent again once they can be read
        self._quiet = 0.0
        for watcher in list(self._watchers):
            watcher.unavailable(reason)
        return failure

    def _nothing_new(self) -> None:
        self._quiet += self.interval
        if self._quiet >= self.heartbeat_interval:
            self._quiet = 0.0
            for watcher in list(self._watchers):
                watcher.heartbeat()
