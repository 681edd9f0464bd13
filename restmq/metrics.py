"""The broker's Prometheus metrics: counted where operations happen, rendered per scrape.

One ``Metrics`` per broker, with its own CollectorRegistry (never the library's global
one), so that several brokers in one process keep apart. Counters count what this
broker process did; Prometheus sums them across brokers.

Counting is on the request path, so it is a dict update: the counts are plain
numbers (the broker counts on the reactor thread only), and the library turns them
into metric families when Prometheus scrapes. The library's Counter and Histogram
take a lock and validate on every call, several times the cost.

Every series labelled by queue shares one bound: the first ``max_queues`` distinct
queues a broker sees get their own series, any further queue is counted under
``queue="_other"``, so a client inventing queue names cannot exhaust memory.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from restmq.defaults import DEFAULT_METRICS_MAX_QUEUES

#: the queue label of every queue past the bound
OTHER = "_other"
#: what GET /metrics answers with: the text exposition format 0.0.4
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: how a message was taken (the ``how`` label)
POP, STREAM, LEASE = "pop", "stream", "lease"
#: Redis calls take well under a millisecond on a healthy server; the upper buckets
#: show a server that stalls (the broker gives up after --redis-timeout)
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5)  # fmt: skip


class QueueLabels:
    """The queue label of a queue name: itself for the first ``limit`` queues, else _other."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, queue: str) -> str:
        if queue in self._known:
            return queue
        if len(self._known) < self.limit:
            self._known.add(queue)
            return queue
        return OTHER


@dataclass
class _Counter:
    """A counter family: its totals by label values."""

    name: str  # without _total: the library adds it
    documentation: str
    labels: tuple[str, ...]
    counts: dict[tuple[str, ...], float] = field(default_factory=dict)

    def add(self, labels: tuple[str, ...], n: float) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + n

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, count in self.counts.items():
            family.add_metric(labels, count)
        return family


class _Timings:
    """One label's histogram: the count in each bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(REDIS_BUCKETS) + 1)  # the last: above every bound
        self.total = 0.0


class _Collector:
    """Hands the registry the counters, the histogram and the gauges of one scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on what was counted; nothing to check beforehand

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        for counter in metrics.counters:
            yield counter.family()
        yield metrics.redis_histogram()
        yield from metrics.gauges()


@dataclass(frozen=True)
class Snapshot:
    """What the gauges show, read by the /metrics handler just before rendering."""

    storage_up: bool
    queue_lengths: dict[str, int] = field(default_factory=dict)  # empty when storage is down
    consumers: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, transport)


class Metrics:
    """The counters, the Redis latency histogram and the gauges of one broker."""

    def __init__(self, max_queues: int = DEFAULT_METRICS_MAX_QUEUES) -> None:
        self.queue_label = QueueLabels(max_queues)
        self._added = _Counter("restmq_messages_added", "Messages added", ("queue",))
        self._taken = _Counter(
            "restmq_messages_taken",
            "Messages taken: popped, delivered to a streaming consumer, or leased",
            ("queue", "how"),
        )
        self._acked = _Counter(
            "restmq_messages_acked", "Leased messages acknowledged (deleted)", ("queue",)
        )
        self._expired = _Counter(
            "restmq_leases_expired",
            "Leases that ran out unacknowledged (the message went back, or died)",
            ("queue",),
        )
        self._dead = _Counter(
            "restmq_messages_dead",
            "Messages moved to the queue's dead letters (<queue>:dead)",
            ("queue",),
        )
        self._http = _Counter(
            "restmq_http_requests",
            "HTTP requests answered, by route pattern, method and status code",
            ("route", "method", "code"),
        )
        self.counters = (self._added, self._taken, self._acked, self._expired, self._dead,
                         self._http)  # fmt: skip
        self._redis: dict[str, _Timings] = {}
        self._snapshot = Snapshot(storage_up=False)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_Collector(self))

    # -- counting -----------------------------------------------------------

    def added(self, queue: str, n: int = 1) -> None:
        if n:
            self._added.add((self.queue_label(queue),), n)

    def taken(self, queue: str, how: str, n: int = 1) -> None:
        """``n`` messages of ``queue`` taken; ``how``: POP, STREAM or LEASE."""
        if n:
            self._taken.add((self.queue_label(queue), how), n)

    def acked(self, queue: str, n: int = 1) -> None:
        if n:
            self._acked.add((self.queue_label(queue),), n)

    def leases_ended(self, queue: str, requeued: int, dead: int) -> None:
        """Leases of ``queue`` that ran out: ``requeued`` went back, ``dead`` to <queue>:dead."""
        if requeued + dead:
            self._expired.add((self.queue_label(queue),), requeued + dead)
        if dead:
            self._dead.add((self.queue_label(queue),), dead)

    def http_request(self, route: str, method: str, code: int) -> None:
        self._http.add((route, method, str(code)), 1)

    def redis_call(self, call: str, seconds: float) -> None:
        """A Redis reply came ``seconds`` after ``call`` (a command or script name) was sent."""
        timings = self._redis.get(call)
        if timings is None:
            timings = self._redis[call] = _Timings()
        timings.counts[bisect_left(REDIS_BUCKETS, seconds)] += 1
        timings.total += seconds

    # -- scraping -----------------------------------------------------------

    def render(self, snapshot: Snapshot) -> bytes:
        """Every metric in the text format (CONTENT_TYPE), the gauges from ``snapshot``."""
        # Set and read in one reactor turn: no other scrape can come in between.
        self._snapshot = snapshot
        return generate_latest(self.registry)

    def redis_histogram(self) -> Metric:
        family = HistogramMetricFamily(
            "restmq_redis_call_seconds",
            "Seconds from sending a Redis call to its reply, by command or script",
            labels=["call"],
        )
        bounds = [*map(floatToGoString, REDIS_BUCKETS), "+Inf"]
        for call, timings in sorted(self._redis.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, timings.counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([call], buckets, timings.total)
        return family

    def gauges(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        up = GaugeMetricFamily(
            "restmq_storage_up", "1 when the broker's Redis answered this scrape, else 0"
        )
        up.add_metric([], 1 if snapshot.storage_up else 0)
        yield up
        lengths = GaugeMetricFamily(
            "restmq_queue_length", "Messages waiting in the queue", labels=["queue"]
        )
        rows = (((queue,), n) for queue, n in snapshot.queue_lengths.items())
        for labels, n in self._bounded(rows).items():
            lengths.add_metric(labels, n)
        yield lengths
        consumers = GaugeMetricFamily(
            "restmq_consumers",
            "Streaming consumers connected to this broker",
            labels=["queue", "transport"],
        )
        for labels, n in self._bounded(snapshot.consumers.items()).items():
            consumers.add_metric(labels, n)
        yield consumers

    def _bounded(self, rows: Iterable[tuple[tuple[str, ...], int]]) -> dict[tuple[str, ...], int]:
        """Values by label values, the queue (the first) bounded: past it, summed as _other."""
        out: dict[tuple[str, ...], int] = {}
        for (queue, *rest), value in sorted(rows):
            labels = (self.queue_label(queue), *rest)
            out[labels] = out.get(labels, 0) + value
        return out
