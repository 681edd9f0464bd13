"""This broker's streaming consumer counts, kept in Redis for every broker's /stats/.

Each broker process (each ``--workers`` process too) writes ``{queue: count}`` under its
own id about every second, when the counts change or to keep them alive; they expire
after a few seconds, so a broker that dies stops being counted within seconds. A broker
that stops clears its counts. /stats/ sums the live ones (restmq.engine.queues).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from restmq.delivery.consumers import ConsumerRegistry
from restmq.engine.queues import QueueEngine
from restmq.lifecycle import Periodic

log = Logger(namespace="restmq.census")

INTERVAL = 1.0  # seconds between writes
LIFETIME_INTERVALS = 3  # counts not written again within this many intervals are dropped


class ConsumerCensus:
    """Writes the registry's counts to Redis every ``interval`` seconds while needed."""

    def __init__(
        self,
        engine: QueueEngine,
        consumers: ConsumerRegistry,
        clock,
        interval: float = INTERVAL,
    ) -> None:
        self.engine = engine
        self.consumers = consumers
        self.interval = interval
        self.lifetime_ms = int(interval * LIFETIME_INTERVALS * 1000)
        self._written: dict[str, int] = {}  # what Redis holds for us, as far as we know
        self._loop = Periodic(
            clock,
            interval,
            self.write,
            what="recording consumer counts in Redis",
            log=log,
            now=True,
        )

    def start(self) -> None:
        self._loop.start()

    def write(self) -> defer.Deferred | None:
        """Write the counts if they changed, or to keep them from expiring."""
        counts = self.consumers.counts()
        if not counts and not self._written:
            return None
        refresh = counts == self._written
        return defer.ensureDeferred(self._write(counts, refresh))

    async def _write(self, counts: dict[str, int], refresh: bool) -> None:
        try:
            kept = await self.engine.report_consumers(counts, self.lifetime_ms, refresh=refresh)
        except Exception:  # Redis away: the next tick tries again
            self._written = {"": -1}  # unknown: write them in full next time
            raise
        # A refresh finds nothing when the counts had expired (Redis restarted, say).
        self._written = counts if kept else {"": -1}

    def stop(self) -> defer.Deferred:
        """Stop writing and clear this broker's counts (its streams have ended)."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self._loop.stop()  # a write under way ends first
        if self._written:
            try:
                await self.engine.report_consumers({}, self.lifetime_ms)
            except Exception as exc:  # they expire on their own within seconds
                log.info("could not clear consumer counts in Redis: {error}", error=exc)
            self._written = {}
