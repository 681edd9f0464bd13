"""The lease sweeper: ends leases that ran out, on every broker, about once a second;
the same sweep moves due delayed messages to the tail of their queue and announces them,
so that streams and long polls get them with no take.

A lease must run out even when the broker that granted it is gone, so every broker
sweeps every queue: the sweeps are script calls on the shared Redis, and leases
already ended by another broker's sweep (or by a take, which ends its queue's
overdue leases first) are simply not found again.

On a Valkey Cluster each queue family (a queue and its dead letters) has its own
leasing index in its own slot, so a sweep is one call per family, spread over the
shards; a sweep visits at most ``families_per_sweep`` of them, going on where the
last one stopped, so that many queues cannot make one sweep long.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from restmq.engine.limits import LEASE_RETURN_LIMIT, SWEEP_QUEUES
from restmq.engine.messages import SweepResult
from restmq.engine.queues import QueueEngine
from restmq.lifecycle import Periodic
from restmq.metrics import Metrics

log = Logger(namespace="restmq.leases")

FAMILIES_AT_ONCE = 50  # cluster sweep calls in flight at once


class LeaseSweeper:
    """Sweeps overdue leases every ``interval`` seconds while started.

    Each sweep is one script call visiting at most ``queues_per_call`` queues and
    ending at most ``leases_per_call`` leases; it calls again only while overdue
    leases remain, at most ``calls_per_sweep`` times, so a backlog cannot hold the
    Redis or the reactor for long.
    """

    def __init__(
        self,
        engine: QueueEngine,
        reactor: IReactorTime,
        *,
        interval: float = 1.0,
        queues_per_call: int = SWEEP_QUEUES,
        leases_per_call: int = LEASE_RETURN_LIMIT,
        calls_per_sweep: int = 10,
        families_per_sweep: int = 1000,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics if metrics is not None else Metrics()
        self.reactor = reactor
        self.interval = interval
        self.queues_per_call = queues_per_call
        self.leases_per_call = leases_per_call
        self.calls_per_sweep = calls_per_sweep
        self.families_per_sweep = families_per_sweep
        self._next_family = 0  # where the next cluster sweep starts in the family list
        self._loop = Periodic(reactor, interval, self._sweep_once, what="lease sweep", log=log)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> defer.Deferred:
        """Stop sweeping; the Deferred fires once a sweep under way has finished."""
        return self._loop.stop()

    async def sweep(self) -> int:
        """End the leases that ran out (within the bounds); return how many ended."""
        if self.engine.layout.clustered:
            return await self._sweep_families()
        ended = 0
        for _ in range(self.calls_per_sweep):
            result = await self.engine.sweep_leases(self.queues_per_call, self.leases_per_call)
            ended += self._count(result)
            if not result.more:
                break
        return ended

    async def _sweep_families(self) -> int:
        families = await self.engine.families()
        if not families:
            return 0
        start = self._next_family % len(families)
        window = (families[start:] + families[:start])[: self.families_per_sweep]
        self._next_family = start + len(window)
        ended = 0
        for at in range(0, len(window), FAMILIES_AT_ONCE):
            calls = [
                defer.ensureDeferred(
                    self.engine.sweep_leases(
                        self.queues_per_call, self.leases_per_call, family=family
                    )
                )
                for family in window[at : at + FAMILIES_AT_ONCE]
            ]
            for outcome in await defer.DeferredList(calls, consumeErrors=True):
                succeeded, result = outcome
                if not succeeded:
                    result.raiseException()  # Periodic logs the outage once
                ended += self._count(result)
        return ended

    def _count(self, result: SweepResult) -> int:
        if result.moved:
            log.debug("{n} delayed message(s) came due", n=result.moved)
        for queue in result.by_queue:
            self.metrics.leases_ended(queue.queue, queue.requeued, queue.dead)
        return result.requeued + result.dead

    async def _sweep_once(self) -> None:
        ended = await self.sweep()
        if ended:
            log.debug("{n} lease(s) ran out and ended", n=ended)
