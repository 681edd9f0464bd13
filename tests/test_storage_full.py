"""A full store: Valkey at its ``maxmemory`` (policy noeviction) refuses writes that could
grow memory. Adds then answer 507 ``{"error": "storage is full"}`` with nothing half
stored, while takes, acks and purges, which only delete, keep working, so consumers can
drain the queue; once they have, adds work again.

A broker on a Valkey of the test's own (``--redis-port``), its maxmemory set with
``CONFIG SET``.
"""

from __future__ import annotations

import xmlrpc.client

import pytest

from tests.support import assert_answer, command, line, post_json, post_value

STORAGE_FULL = line({"error": "storage is full"})
BODY = "m" * 8192  # messages large enough that a few hundred fill the store


@pytest.fixture
def store(valkey_factory):
    server = valkey_factory()
    assert server.command("CONFIG", "SET", "maxmemory-policy", "noeviction") == "OK"
    return server


@pytest.fixture
def broker(store, broker_factory):
    return broker_factory("--redis-port", str(store.port))


def used_memory(store) -> int:
    info = store.command("INFO", "memory")
    return int(next(row for row in info.split("\r\n") if row.startswith("used_memory:"))[12:])


def set_maxmemory(store, size: int) -> None:
    assert store.command("CONFIG", "SET", "maxmemory", str(size)) == "OK"


def stored_messages(store, queue: str) -> tuple[str | None, int, int]:
    """The counter, the list's length and how many of the message keys it names exist."""
    listed = store.command("LRANGE", f"{queue}:queue", "0", "-1")
    bodies = store.command("EXISTS", *listed) if listed else 0
    return store.command("GET", f"{queue}:UUID"), len(listed), bodies


def test_a_store_filled_to_maxmemory_refuses_adds_until_drained(store, broker, queue):
    set_maxmemory(store, used_memory(store) + 2 * 1024 * 1024)
    added = 0
    while (response := broker.post(f"/q/{queue}", value=BODY)).status == 200:
        added += 1
        assert added < 1000, "2 MB more should not hold 8 MB of messages"
    assert_answer(response, STORAGE_FULL, 507)
    assert added > 100

    # the refused add wrote nothing: no number taken, no key listed, no body left
    assert stored_messages(store, queue) == (str(added), added, added)
    assert store.command("EXISTS", f"{queue}:{added + 1}") == 0

    taken = []
    while batch := broker.get(f"/q/{queue}?n=50").json():
        taken += batch
    assert [m["key"] for m in taken] == [f"{queue}:{n}" for n in range(1, added + 1)]
    assert {m["value"] for m in taken} == {BODY}
    assert stored_messages(store, queue) == (str(added), 0, 0)

    assert post_value(broker, queue, BODY) == f"{queue}:{added + 1}"


def test_takes_acks_and_purges_work_while_the_store_is_full(store, broker, queue):
    other = f"{queue}-other"
    for n in range(5):
        post_value(broker, queue, f"m{n}")
    for n in range(3):
        post_value(broker, other, f"o{n}")
    leased = broker.get(f"/q/{queue}?lease=60&n=2").json()

    set_maxmemory(store, 1)  # far below what is used: every write that could grow is refused
    assert store.command("SET", "probe", "x").startswith("OOM ")

    assert_answer(broker.post(f"/q/{queue}", value="x"), STORAGE_FULL, 507)
    assert_answer(post_json(broker, f"/q/{queue}", {"values": ["x", "y"]}), STORAGE_FULL, 507)
    assert_answer(command(broker, {"cmd": "add", "queue": queue, "value": "x"}), STORAGE_FULL, 507)
    rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{broker.port}/xmlrpc")
    with pytest.raises(xmlrpc.client.Fault) as refused:
        rpc.add(queue, "x")
    assert (refused.value.faultCode, refused.value.faultString) == (507, "storage is full")
    assert stored_messages(store, queue) == ("5", 3, 3)

    acked = broker.request("DELETE", f"/q/{queue}?receipt={leased[0]['receipt']}")
    assert acked.json() == {"queue": queue, "key": f"{queue}:1", "acked": True}
    assert broker.get(f"/q/{queue}").json()["value"] == "m2"
    assert [m["value"] for m in broker.get(f"/q/{queue}?n=5").json()] == ["m3", "m4"]
    assert broker.request("DELETE", f"/q/{other}").json() == {"queue": other, "status": 1}
    assert stored_messages(store, other) == ("3", 0, 0)
    assert store.command("SET", "probe", "x").startswith("OOM "), "still full throughout"

    set_maxmemory(store, 0)
    assert post_value(broker, queue, "after") == f"{queue}:6"
