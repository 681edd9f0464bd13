"""What the ``cluster`` scenario needs of a local Valkey Cluster: free ports for it, which
primary holds a queue, and the failover measurement.

The failover: two producers POST to a broker on the cluster, one to a queue whose slot
is on the primary about to be killed, one to a queue on another shard. The primary is
SIGKILLed; what counts is the time from the kill to the first POST (sent after the kill)
answered 200 for its queue, and whether the other queue answered 200 all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

from bench.httpclient import HttpConnection, HttpError, encode_request, form_body
from restmq.runtime.local_cluster import BUS_OFFSET, LocalCluster, Node

FORM = "application/x-www-form-urlencoded"
LOWEST_BASE, HIGHEST_BASE = 12800, 19990  # node ports; their bus ports stay below 30000
REQUEST_TIMEOUT = 5.0  # seconds a POST may take before it counts as unanswered
RETRY_PAUSE = 0.01  # after a failed POST: a broker that fails at once must not be spun on


def free_cluster_base(count: int) -> int:
    """A first port for ``count`` cluster nodes: those ports and their bus ports
    (+10000) are free, all below the ephemeral range (from 32768), so that no outgoing
    connection takes one before the nodes bind them."""
    for _ in range(200):
        base = random.randrange(LOWEST_BASE, HIGHEST_BASE - count)
        ports = [*range(base, base + count), *range(base + BUS_OFFSET, base + BUS_OFFSET + count)]
        if all(_port_is_free(port) for port in ports):
            return base
    raise RuntimeError(f"no block of {count} free ports (and their bus ports) found")


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # as valkey-server binds: a port left in TIME_WAIT is free to it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def queue_owner(cluster: LocalCluster, queue: str) -> Node:
    """The primary that holds ``queue``, as the cluster says: the slot of its list key
    ``{queue}:queue`` (a broker on a cluster keeps queue q under the hash tag {q}),
    looked up in CLUSTER SLOTS."""
    asked = next(node for node in cluster.nodes if node.alive)
    slot = asked.command("CLUSTER", "KEYSLOT", f"{{{queue}}}:queue")
    for first, last, primary, *_replicas in asked.command("CLUSTER", "SLOTS"):
        if first <= slot <= last:
            return cluster.node_at(int(primary[1]))
    raise RuntimeError(f"no node of the cluster serves slot {slot} (queue {queue!r})")


@dataclass
class Answer:
    sent: float  # monotonic seconds
    done: float
    status: int | None  # None: no answer (connection lost, unreadable, timed out)


@dataclass
class Producer:
    """POSTs to one queue in a closed loop, keeping every answer."""

    port: int
    queue: str
    value: str
    answers: list[Answer] = field(default_factory=list)
    killed_at: float | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # a first 200
    resumed: asyncio.Event = field(default_factory=asyncio.Event)  # a 200 sent after the kill

    async def run(self, stop: asyncio.Event) -> None:
        raw = encode_request(
            "POST", f"/q/{self.queue}", port=self.port,
            body=form_body(value=self.value), content_type=FORM,
        )  # fmt: skip
        conn = HttpConnection(self.port)
        try:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    answer = await asyncio.wait_for(conn.request(raw, "POST"), REQUEST_TIMEOUT)
                    status: int | None = answer.status
                except (OSError, asyncio.IncompleteReadError, HttpError, TimeoutError):
                    status = None
                self.answers.append(Answer(sent, time.monotonic(), status))
                if status == 200:
                    self.answered.set()
                    if self.killed_at is not None and sent >= self.killed_at:
                        self.resumed.set()
                if status != 200:
                    await asyncio.sleep(RETRY_PAUSE)
        finally:
            conn.close()

    def sent_after(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.sent >= moment]


@dataclass
class Failover:
    victim_port: int
    victim_queue: str
    other_queue: str
    resumed_s: float | None  # kill -> first 200 for the victim's queue; None: not within the limit
    observed_s: float  # how long after the kill the producers were watched
    victim_statuses: Counter  # answers to POSTs sent to the victim's queue after the kill
    other_statuses: Counter  # answers to POSTs sent to the other queue after the kill
    other_longest_gap_s: float  # longest time without an answer for the other queue
    promoted: int | None  # port of the replica that is primary now (None: unknown)

    @property
    def other_kept_answering(self) -> bool:
        return set(self.other_statuses) == {200} and self.other_longest_gap_s < 1.0


def measure_failover(
    cluster: LocalCluster,
    port: int,
    queue_prefix: str,
    value: str,
    settle: float,
    limit: float,
) -> Failover:
    """POST to a queue on one primary and to one on another; once both are answered 200,
    wait ``settle`` seconds, SIGKILL the first primary and watch until its queue takes
    writes again (at most ``limit`` seconds)."""
    victim_queue = f"{queue_prefix}-victim"
    victim = queue_owner(cluster, victim_queue)
    other_queue = next(
        name
        for name in (f"{queue_prefix}-other{i}" for i in range(1000))
        if queue_owner(cluster, name) is not victim
    )
    on_victim = Producer(port, victim_queue, value)
    on_other = Producer(port, other_queue, value)
    killed = asyncio.run(_watch(on_victim, on_other, lambda: cluster.kill(victim), settle, limit))
    ended = max((a.done for a in on_victim.answers + on_other.answers), default=killed)
    for producer in (on_victim, on_other):
        if not any(a.status == 200 and a.done < killed for a in producer.answers):
            raise RuntimeError(
                f"POST /q/{producer.queue} was never answered 200 before the kill: "
                f"{Counter(a.status for a in producer.answers)}"
            )
    first = next((a for a in on_victim.answers if a.status == 200 and a.sent >= killed), None)
    return Failover(
        victim_port=victim.port,
        victim_queue=victim_queue,
        other_queue=other_queue,
        resumed_s=None if first is None else first.done - killed,
        observed_s=ended - killed,
        victim_statuses=Counter(a.status for a in on_victim.sent_after(killed)),
        other_statuses=Counter(a.status for a in on_other.sent_after(killed)),
        other_longest_gap_s=_longest_gap(killed, ended, on_other.sent_after(killed)),
        promoted=_promoted(cluster, victim),
    )


async def _watch(
    on_victim: Producer,
    on_other: Producer,
    kill: Callable[[], None],
    settle: float,
    limit: float,
) -> float:
    """Run both producers, kill once both are answered and ``settle`` s more have passed;
    return the monotonic time of the kill."""
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(p.run(stop)) for p in (on_victim, on_other)]
    try:
        with contextlib.suppress(TimeoutError):  # checked by the caller: 200 before the kill
            await asyncio.wait_for(
                asyncio.gather(on_victim.answered.wait(), on_other.answered.wait()), limit
            )
        await asyncio.sleep(settle)  # a steady stream of answers before the kill
        killed = on_victim.killed_at = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, kill)
        with contextlib.suppress(TimeoutError):  # not resumed in time: reported so
            await asyncio.wait_for(
                on_victim.resumed.wait(), max(0.0, killed + limit - time.monotonic())
            )
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return killed


def _longest_gap(start: float, end: float, answers: list[Answer]) -> float:
    """The longest stretch from ``start`` to ``end`` without an answer."""
    moments = [start, *sorted(a.done for a in answers), end]
    return max(b - a for a, b in pairwise(moments))


def _promoted(cluster: LocalCluster, victim: Node) -> int | None:
    for node in cluster.replicas:
        if node.shard == victim.shard and node.alive:
            try:
                if node.live_role() == "primary":
                    return node.port
            except OSError:
                return None
    return None
