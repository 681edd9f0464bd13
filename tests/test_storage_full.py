"""A full store: Valkey at its ``maxmemory`` (policy noeviction) refuses writes that could
grow memory. Adds then answer 507 ``{"error": "storage is full"}`` with nothing half
stored, while takes, acks and purges, which only delete, keep working, so consumers can
drain the queue; once they have, adds work again.

A broker on a Valkey of the test's own (``--redis-port``), or on a Valkey Cluster of the
test's own where the primary serving the queue's slot is the one filled; its maxmemory set
with ``CONFIG SET``.
"""

from __future__ import annotations

import xmlrpc.client

import pytest

from tests.support import (
    STORAGE_MODES,
    assert_answer,
    command,
    line,
    own_storage_args,
    post_json,
    post_value,
    queue_command,
    stem_of,
)

pytestmark = STORAGE_MODES

STORAGE_FULL = line({"error": "storage is full"})
BODY = "m" * 8192  # messages large enough that a few hundred fill the store


@pytest.fixture
def broker(storage, broker_factory, valkey_factory, cluster_factory):
    """A broker on a standalone Valkey, or on a cluster of 3 primaries (no replica: the
    filled primary's memory is its own, no replication buffer in it)."""
    if storage == "cluster":
        return broker_factory(*own_storage_args(storage, cluster_factory, replicas=0))
    return broker_factory("--redis-port", str(valkey_factory().port))


class Store:
    """The Valkey that holds ``queue``'s keys, as ``broker`` names them; its maxmemory
    (policy noeviction) is lifted again after the test."""

    def __init__(self, broker, queue: str) -> None:
        self.broker, self.queue = broker, queue
        self.stem = stem_of(broker, queue)

    def command(self, *args):
        return queue_command(self.broker, self.queue, *args)

    def used_memory(self) -> int:
        info = self.command("INFO", "memory")
        return int(next(row for row in info.split("\r\n") if row.startswith("used_memory:"))[12:])

    def set_maxmemory(self, size: int) -> None:
        assert self.command("CONFIG", "SET", "maxmemory", str(size)) == "OK"

    def key(self, suffix: str) -> str:
        return f"{self.stem}:{suffix}"

    def stored_messages(self, queue: str) -> tuple[str | None, int, int]:
        """The counter, the list's length and how many of the message keys it names exist
        (``queue`` is this queue or one of its family: its keys are on the same node)."""
        stem = stem_of(self.broker, queue)
        listed = self.command("LRANGE", f"{stem}:queue", "0", "-1")
        bodies = self.command("EXISTS", *listed) if listed else 0
        return self.command("GET", f"{stem}:UUID"), len(listed), bodies


@pytest.fixture
def store(broker, queue):
    store = Store(broker, queue)
    assert store.command("CONFIG", "SET", "maxmemory-policy", "noeviction") == "OK"
    yield store
    store.set_maxmemory(0)


def test_a_store_filled_to_maxmemory_refuses_adds_until_drained(store, broker, queue):
    store.set_maxmemory(store.used_memory() + 2 * 1024 * 1024)
    added = 0
    while (response := broker.post(f"/q/{queue}", value=BODY)).status == 200:
        added += 1
        assert added < 1000, "2 MB more should not hold 8 MB of messages"
    assert_answer(response, STORAGE_FULL, 507)
    assert added > 100

    # the refused add wrote nothing: no number taken, no key listed, no body left
    assert store.stored_messages(queue) == (str(added), added, added)
    assert store.command("EXISTS", broker.key(queue, added + 1)) == 0

    taken = []
    while batch := broker.get(f"/q/{queue}?n=50").json():
        taken += batch
    assert [m["key"] for m in taken] == [broker.key(queue, n) for n in range(1, added + 1)]
    assert {m["value"] for m in taken} == {BODY}
    assert store.stored_messages(queue) == (str(added), 0, 0)

    assert post_value(broker, queue, BODY) == broker.key(queue, added + 1)


def test_takes_acks_and_purges_work_while_the_store_is_full(store, broker, queue):
    other = f"{queue}:other"  # of the queue's family: its keys are on the same node
    for n in range(5):
        post_value(broker, queue, f"m{n}")
    for n in range(3):
        post_value(broker, other, f"o{n}")
    leased = broker.get(f"/q/{queue}?lease=60&n=2").json()

    store.set_maxmemory(1)  # far below what is used: every write that could grow is refused
    assert store.command("SET", store.key("probe"), "x").startswith("OOM ")

    assert_answer(broker.post(f"/q/{queue}", value="x"), STORAGE_FULL, 507)
    assert_answer(post_json(broker, f"/q/{queue}", {"values": ["x", "y"]}), STORAGE_FULL, 507)
    assert_answer(command(broker, {"cmd": "add", "queue": queue, "value": "x"}), STORAGE_FULL, 507)
    rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{broker.port}/xmlrpc")
    with pytest.raises(xmlrpc.client.Fault) as refused:
        rpc.add(queue, "x")
    assert (refused.value.faultCode, refused.value.faultString) == (507, "storage is full")
    assert store.stored_messages(queue) == ("5", 3, 3)

    acked = broker.request("DELETE", f"/q/{queue}?receipt={leased[0]['receipt']}")
    assert acked.json() == {"queue": queue, "key": broker.key(queue, 1), "acked": True}
    assert broker.get(f"/q/{queue}").json()["value"] == "m2"
    assert [m["value"] for m in broker.get(f"/q/{queue}?n=5").json()] == ["m3", "m4"]
    assert broker.request("DELETE", f"/q/{other}").json() == {"queue": other, "status": 1}
    assert store.stored_messages(other) == ("3", 0, 0)
    assert store.command("SET", store.key("probe"), "x").startswith("OOM "), "still full throughout"

    store.set_maxmemory(0)
    assert post_value(broker, queue, "after") == broker.key(queue, 6)
