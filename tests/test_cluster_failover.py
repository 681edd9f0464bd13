"""A broker on a Valkey Cluster when a primary dies under load: it follows the promoted
replica, writes to that shard's queues resume within seconds, the other shards never
stop, and nothing acknowledged is lost.

Real `twistd restmq` process, real cluster (3 primaries, 2 replicas each, so that with
``--redis-wait-replicas 1`` an add answered 200 is on a replica that can be promoted),
real HTTP clients in threads.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from restmq.engine.keys import CLUSTER, list_key
from restmq.storage.cluster_slots import key_slot
from tests.support import HttpStream, request, take_all, wait_for

RESUME_WITHIN = 10.0  # seconds from the primary's death to the first write answered 200


def owner_port(cluster, slot: int) -> int:
    """The port of the primary that serves ``slot``, as a live node tells it."""
    node = next(node for node in cluster.nodes if node.alive)
    for first, last, primary, *_ in node.command("CLUSTER", "SLOTS"):
        if int(first) <= slot <= int(last):
            return int(primary[1])
    raise AssertionError(f"no primary serves slot {slot}")


def queue_on(cluster, port: int | None, avoid: int | None = None) -> str:
    """A fresh queue name whose keys live on the primary at ``port`` (any other primary
    than ``avoid`` when ``port`` is None)."""
    while True:
        name = f"fo-{uuid.uuid4().hex[:8]}"
        owner = owner_port(cluster, key_slot(list_key(CLUSTER.stem(name))))
        if owner == port or (port is None and owner != avoid):
            return name


@dataclass
class Producer:
    """POSTs numbered messages to one queue, one after the other, until stopped; keeps
    every answer with the time it came."""

    port: int
    queue: str
    answers: list[tuple[float, int, str]] = field(default_factory=list)  # (time, status, value)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Producer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            value = f"{self.queue}-{n}"
            n += 1
            try:
                status = request(
                    self.port, "POST", f"/q/{self.queue}", form={"value": value}, timeout=5
                ).status
            except OSError:
                status = 0
            self.answers.append((time.monotonic(), status, value))
            if status != 200:
                time.sleep(0.02)  # a refused write is retried soon, not in a hot loop

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)

    def accepted(self) -> list[str]:
        return [value for _, status, value in self.answers if status == 200]


def test_a_killed_primary_is_followed_and_nothing_acknowledged_is_lost(
    cluster_factory, broker_factory
):
    cluster = cluster_factory(primaries=3, replicas=2)
    broker = broker_factory(
        f"--redis-cluster={','.join(cluster.seeds)}", "--redis-wait-replicas", "1"
    )
    victim_port = cluster.primaries[0].port
    busy = queue_on(cluster, victim_port)
    watched = queue_on(cluster, victim_port)  # a stream held open through the failover
    elsewhere = queue_on(cluster, None, avoid=victim_port)
    held = HttpStream(broker.port, watched, sse=True).start()
    wait_for(lambda: broker.get(f"/stats/{watched}").json()["consumers"] == 1, 10)
    assert broker.post(f"/q/{watched}", value="before").status == 200
    assert held.next_message(5)["value"] == "before"

    producers = [Producer(broker.port, busy).start(), Producer(broker.port, elsewhere).start()]
    wait_for(lambda: all(len(p.accepted()) >= 20 for p in producers), 20, what="load")
    killed_at = time.monotonic()
    cluster.kill(cluster.node_at(victim_port))
    wait_for(
        lambda: any(t > killed_at and s == 200 for t, s, _ in producers[0].answers),
        RESUME_WITHIN + 5,
        what="a write to the failed shard's queue answered 200",
    )
    resumed_at = next(t for t, s, _ in producers[0].answers if t > killed_at and s == 200)
    wait_for(lambda: len(producers[0].accepted()) >= 40 + 20, 20, what="load after failover")
    for producer in producers:
        producer.stop()

    assert resumed_at - killed_at < RESUME_WITHIN
    refused = [(t - killed_at, s) for t, s, _ in producers[0].answers if s != 200]
    assert all(status == 503 or status == 504 for _, status in refused), refused
    # the queue on a shard that kept its primary never stopped
    assert [s for _, s, _ in producers[1].answers if s != 200] == []
    # every add answered 200 is there: none lost by the failover
    for producer in producers:
        stored = [m["value"] for m in take_all(broker, producer.queue)]
        missing = set(producer.accepted()) - set(stored)
        assert not missing, f"{len(missing)} acknowledged adds of {producer.queue} lost"
    # leases and streams keep working on the promoted primary
    assert broker.post(f"/q/{busy}", value="leased").status == 200
    taken = broker.get(f"/q/{busy}?lease=30").json()
    assert taken["value"] == "leased"
    acked = request(broker.port, "DELETE", f"/q/{busy}?receipt={taken['receipt']}")
    assert acked.status == 200
    assert broker.post(f"/q/{watched}", value="after").status == 200
    assert held.next_message(5)["value"] == "after"
    held.close()
