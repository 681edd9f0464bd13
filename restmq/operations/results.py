"""What the queue operations (restmq.operations.queue_operations) return.

The front ends render these (restmq.web.shapes builds the bodies); this module imports
nothing of the operations, so a renderer needs no more than the results.
"""

from __future__ import annotations

from dataclasses import dataclass

from restmq.engine.messages import QueueStats


@dataclass(frozen=True)
class Added:
    queue: str
    keys: list[str]  # in the order the values were given
    replayed: bool = False  # an idempotent add answered again: nothing was stored

    @property
    def key(self) -> str:
        return self.keys[0]


@dataclass(frozen=True)
class Deleted:
    queue: str
    key: str
    deleted: bool  # False: no such message (taken already, or never added)


@dataclass(frozen=True)
class Purged:
    queue: str
    count: int  # messages that were pending


@dataclass(frozen=True)
class Policy:
    queue: str
    policy: str  # "broadcast" or "roundrobin"
    max_deliveries: int | None = None  # deliveries before a message is dead; 0 no limit
    max_length: int = 0  # messages the queue may hold (pending and delayed); 0 no bound


@dataclass(frozen=True)
class Acked:
    queue: str
    key: str
    acked: bool  # False: the lease had run out, was settled, or is of an earlier delivery


@dataclass(frozen=True)
class LeaseChanged:
    """An extended or released lease."""

    queue: str
    key: str
    receipt: str
    lease: int  # seconds from now it ends; 0: released, the message is back at the head


@dataclass(frozen=True)
class Status:
    queue: str
    status: int  # 1 started, 0 stopped


@dataclass(frozen=True)
class QueueFigures:
    """One queue's line in /stats/: its stored stats and its streaming consumers on
    every broker (and worker) sharing the Redis."""

    stats: QueueStats
    consumers: int


@dataclass(frozen=True)
class StorageState:
    """The storage as an operator reads it on the dashboard."""

    kind: str  # "Redis", "embedded Valkey" or "Sentinel"
    address: str  # where: a unix socket, host:port, or the Sentinel service and its master
    connections: int  # pool connections up now

    @property
    def up(self) -> bool:
        return self.connections > 0


@dataclass(frozen=True)
class AllStats:
    storage: str  # where Redis is and how many connections are up
    queues: list[QueueFigures]  # sorted by name
    storage_state: StorageState | None = None  # the same, for the dashboard


@dataclass(frozen=True)
class OneStats:
    storage: str
    queue: str
    length: int
    consumers: int  # streaming consumers of the queue on every broker sharing the Redis
    leased: int = 0  # messages handed out under a lease and not yet acked
    dead: int | None = None  # length of <queue>:dead; None when there is no such queue
    delayed: int = 0  # messages waiting until they are due


@dataclass(frozen=True)
class Subscription:
    """A durable subscription of ``queue``: its messages also go to ``delivers_to``."""

    queue: str
    name: str
    delivers_to: str  # the subscription's queue, ``<queue>:<name>``
    changed: bool  # subscribe: created now (not there before); unsubscribe: ended now
