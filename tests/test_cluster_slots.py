"""Where a key lives in a Valkey Cluster: the slot RestMQ computes is the one the cluster
computes, the slot map names the primary that serves it, and redirections are read.

Against the session's real cluster (3 primaries, 1 replica each), read with the tests'
own RESP client.
"""

from __future__ import annotations

import random
import string

import pytest

from restmq.storage.cluster_slots import (
    CrossSlotKeys,
    Redirection,
    SlotMap,
    common_slot,
    key_slot,
    parse_redirection,
)
from tests.support import redis_command


def command(port: int, *args):
    return redis_command(("127.0.0.1", port), *args)


def sample_keys() -> list[str]:
    chosen = random.Random(20)
    alphabet = string.ascii_letters + string.digits + ":-_.{} "
    keys = ["".join(chosen.choices(alphabet, k=chosen.randint(1, 40))) for _ in range(200)]
    keys += [f"{{q{i}}}:queue" for i in range(40)]
    keys += [f"{{q{i}}}:{i}" for i in range(20)]
    keys += [
        "{}", "{}x", "x{}", "a{}{b}", "{}{b}", "{{b}}", "{b}}", "a{b", "a}b{c}", "}{a}",
        "{a}{b}", "{ }", "{a", "}", "{", "",
        "fila-ção", "{fila-ção}:queue", "队列", "{队列}:queue", "{队列}:UUID", "🐇{🐇}",
        "{ü}", "ü{}", "x" * 1000, "{" + "y" * 500 + "}",
    ]  # fmt: skip
    return keys


def test_the_slot_of_a_key_is_the_one_the_cluster_computes(valkey_cluster):
    port = valkey_cluster.nodes[0].port
    keys = sample_keys()
    assert len(keys) > 250
    for key in keys:
        assert key_slot(key) == command(port, "CLUSTER", "KEYSLOT", key), key
        assert key_slot(key.encode()) == key_slot(key)


def test_keys_that_share_a_hash_tag_share_a_slot():
    assert common_slot(["{q1}:queue", "{q1}:UUID", "{q1}:7"]) == key_slot("q1")
    assert common_slot([]) is None
    with pytest.raises(CrossSlotKeys) as refused:
        common_slot(["{q1}:queue", "{q2}:queue"])
    assert "'{q1}:queue'" in str(refused.value)
    assert "same hash tag" in str(refused.value)


def test_the_slot_map_names_the_primary_and_replica_of_every_slot(valkey_cluster):
    port = valkey_cluster.nodes[0].port
    shards = SlotMap.from_shards(command(port, "CLUSTER", "SHARDS"), "127.0.0.1")
    slots = SlotMap.from_slots(command(port, "CLUSTER", "SLOTS"), "127.0.0.1")
    for found in (shards, slots):
        assert found.uncovered() == 0
        assert sorted(node.port for node in found.primaries) == sorted(
            node.port for node in valkey_cluster.primaries
        )
        for shard in found.shards:
            primary = valkey_cluster.node_at(shard.primary.port)
            assert shard.primary.node_id == primary.node_id
            assert [replica.port for replica in shard.replicas] == [
                node.port for node in valkey_cluster.replicas if node.shard == primary.shard
            ]
    for slot in range(0, 16384, 97):
        assert shards.primary_of(slot) == slots.primary_of(slot)
    # the node the map names stores the key; another answers that it moved there
    for key in ("{map-a}:queue", "{map-b}:queue", "{map-c}:queue", "map-d"):
        owner = shards.primary_of(key_slot(key)).port
        assert command(owner, "SET", key, "here") == "OK"
        assert command(owner, "GET", key) == "here"
        other = next(node.port for node in valkey_cluster.primaries if node.port != owner)
        moved = parse_redirection(command(other, "GET", key))
        assert moved == Redirection("MOVED", key_slot(key), "127.0.0.1", owner)
        assert command(owner, "DEL", key) == 1


def test_a_slot_moved_by_hand_is_served_by_its_new_owner_in_the_map():
    shards = SlotMap.from_slots([[0, 16383, ["10.0.0.1", 7000, "a"]]], "127.0.0.1")
    moved = shards.moved(5, "10.0.0.2", 7001)
    assert moved.primary_of(5).address == ("10.0.0.2", 7001)
    assert moved.primary_of(4).address == ("10.0.0.1", 7000)
    assert shards.primary_of(5).address == ("10.0.0.1", 7000)  # the map read stays as read
    assert len(moved.primaries) == 2


def test_redirection_texts_are_read_and_other_errors_are_not():
    assert parse_redirection("ASK 12182 127.0.0.1:7001") == Redirection(
        "ASK", 12182, "127.0.0.1", 7001
    )
    assert parse_redirection("MOVED 1 ::1:7002") == Redirection("MOVED", 1, "::1", 7002)
    assert parse_redirection("MOVED 3999 :7003") == Redirection("MOVED", 3999, "", 7003)
    for other in ("ERR unknown command", "MOVED", "MOVED x 127.0.0.1:1", "ASK 1 nohost", ""):
        assert parse_redirection(other) is None


def test_a_node_whose_address_is_unknown_is_taken_to_be_on_the_host_asked():
    reply = [[0, 16383, ["", 7000, "a"], ["?", 7001, "b"]]]
    found = SlotMap.from_slots(reply, "192.0.2.9")
    assert found.primary_of(0).address == ("192.0.2.9", 7000)
    assert found.shard_of(0).replicas[0].address == ("192.0.2.9", 7001)
