"""The broker's Prometheus metrics: counters where operations happen, gauges at scrape time.

One ``Metrics`` per broker, with its own CollectorRegistry (never the library's global
one), so that several brokers in one process keep apart. Counters count what this
broker process did; Prometheus sums them across brokers.

Every series labelled by queue shares one bound: the first ``max_queues`` distinct
queues a broker sees get their own series, any further queue is counted under
``queue="_other"``, so a client inventing queue names cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from restmq.options import DEFAULT_METRICS_MAX_QUEUES

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


class _Children:
    """A labelled metric's children, looked up once per label set.

    The library's ``labels()`` validates and locks on every call; the request path
    only needs a dict lookup.
    """

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self._children: dict[Hashable, Counter | Histogram] = {}

    def __getitem__(self, labels: tuple[str, ...]):
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        return child


@dataclass(frozen=True)
class Snapshot:
    """What the gauges show, read by the /metrics handler just before rendering."""

    storage_up: bool
    queue_lengths: dict[str, int] = field(default_factory=dict)  # empty when storage is down
    consumers: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, transport)


class _GaugeCollector:
    """The gauges: built from the snapshot of the scrape under way, never from Redis."""

    def __init__(self, labels: QueueLabels) -> None:
        self.labels = labels
        self.snapshot = Snapshot(storage_up=False)

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on the scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        up = GaugeMetricFamily(
            "restmq_storage_up", "1 when the broker's Redis answered this scrape, else 0"
        )
        up.add_metric([], 1 if snapshot.storage_up else 0)
        yield up
        lengths = GaugeMetricFamily(
            "restmq_queue_length", "Messages waiting in the queue", labels=["queue"]
        )
        for (queue,), value in self._summed(
            ((q,), n) for q, n in snapshot.queue_lengths.items()
        ).items():
            lengths.add_metric([queue], value)
        yield lengths
        consumers = GaugeMetricFamily(
            "restmq_consumers",
            "Streaming consumers connected to this broker",
            labels=["queue", "transport"],
        )
        for labels, value in self._summed(snapshot.consumers.items()).items():
            consumers.add_metric(list(labels), value)
        yield consumers

    def _summed(self, rows: Iterable[tuple[tuple[str, ...], int]]) -> dict[tuple[str, ...], int]:
        """Values by label set, the queue (first label) bounded: past it, summed as _other."""
        out: dict[tuple[str, ...], int] = {}
        for (queue, *rest), value in sorted(rows):
            key = (self.labels(queue), *rest)
            out[key] = out.get(key, 0) + value
        return out


class Metrics:
    """The counters, the Redis latency histogram and the gauge collector of one broker."""

    def __init__(self, max_queues: int = DEFAULT_METRICS_MAX_QUEUES) -> None:
        self.registry = CollectorRegistry()
        self.queue_label = QueueLabels(max_queues)
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._added = _Children(
            Counter(
                "restmq_messages_added",
                "Messages added to the queue",
                ["queue"],
                registry=registry,
            )
        )
        self._taken = _Children(
            Counter(
                "restmq_messages_taken",
                "Messages taken from the queue: popped, delivered to a stream, or leased",
                ["queue", "how"],
                registry=registry,
            )
        )
        self._acked = _Children(
            Counter(
                "restmq_messages_acked",
                "Leased messages acknowledged (deleted)",
                ["queue"],
                registry=registry,
            )
        )
        self._expired = _Children(
            Counter(
                "restmq_leases_expired",
                "Leases that ran out before an ack (the message went back or died)",
                ["queue"],
                registry=registry,
            )
        )
        self._dead = _Children(
            Counter(
                "restmq_messages_dead",
                "Messages moved to the queue's dead letters (<queue>:dead)",
                ["queue"],
                registry=registry,
            )
        )
        self._http = _Children(
            Counter(
                "restmq_http_requests",
                "HTTP requests answered, by route pattern, method and status code",
                ["route", "method", "code"],
                registry=registry,
            )
        )
        self._redis = _Children(
            Histogram(
                "restmq_redis_call_seconds",
                "Seconds from sending a Redis call to its reply, by command or script",
                ["call"],
                buckets=REDIS_BUCKETS,
                registry=registry,
            )
        )
        self._gauges = _GaugeCollector(self.queue_label)
        registry.register(self._gauges)

    # -- counters -----------------------------------------------------------

    def added(self, queue: str, n: int = 1) -> None:
        if n:
            self._added[(self.queue_label(queue),)].inc(n)

    def taken(self, queue: str, how: str, n: int = 1) -> None:
        """``n`` messages of ``queue`` taken; ``how``: POP, STREAM or LEASE."""
        if n:
            self._taken[(self.queue_label(queue), how)].inc(n)

    def acked(self, queue: str, n: int = 1) -> None:
        if n:
            self._acked[(self.queue_label(queue),)].inc(n)

    def leases_ended(self, queue: str, requeued: int, dead: int) -> None:
        """Leases of ``queue`` that ran out: ``requeued`` went back, ``dead`` to <queue>:dead."""
        label = self.queue_label(queue)
        if requeued + dead:
            self._expired[(label,)].inc(requeued + dead)
        if dead:
            self._dead[(label,)].inc(dead)

    def http_request(self, route: str, method: str, code: int) -> None:
        self._http[(route, method, str(code))].inc()

    def redis_call(self, call: str, seconds: float) -> None:
        self._redis[(call,)].observe(seconds)

    # -- exposition ---------------------------------------------------------

    def render(self, snapshot: Snapshot) -> bytes:
        """Every metric in the text format (CONTENT_TYPE), the gauges from ``snapshot``."""
        # Set and read in one reactor turn: no other scrape can come in between.
        self._gauges.snapshot = snapshot
        return generate_latest(self.registry)
