"""Where a key lives in a Valkey Cluster: its slot, and which node serves that slot.

A cluster splits its keys into 16384 slots by CRC16 (XMODEM) of the key, or of its
hash tag: the text between the first ``{`` and the first ``}`` after it, when that is not
empty. Keys with the same tag share a slot, so one Lua script may touch them all: every
key of a RestMQ queue carries the queue's tag. Each slot is served by one primary (and
copied to its replicas); the slot map says which, as ``CLUSTER SHARDS`` (or, on older
servers, ``CLUSTER SLOTS``) tells it. A node asked about a key it does not serve answers
``MOVED <slot> <host:port>`` (the slot has a new owner) or ``ASK <slot> <host:port>`` (the
slot is being migrated and this key already went over).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SLOT_COUNT = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM (polynomial 0x1021, initial value 0), as Valkey hashes keys."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ byte]
    return crc


def hashed_part(key: bytes) -> bytes:
    """What of ``key`` decides its slot: the hash tag, or the whole key without one."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


#: slots of keys met lately: a broker names the same few keys of a queue in each of its
#: calls, and CRC16 in Python costs far more than a dictionary lookup
_SLOT_OF: dict[str | bytes, int] = {}
_SLOTS_KEPT = 65536


def key_slot(key: str | bytes) -> int:
    """The slot of ``key`` (text is hashed as UTF-8, as it is sent)."""
    slot = _SLOT_OF.get(key)
    if slot is None:
        if len(_SLOT_OF) >= _SLOTS_KEPT:
            _SLOT_OF.clear()
        part = hashed_part(key.encode("utf-8") if isinstance(key, str) else key)
        slot = _SLOT_OF[key] = crc16(part) % SLOT_COUNT
    return slot


class CrossSlotKeys(ValueError):
    """A call named keys of different slots: a programming error, since no node can run it."""


def common_slot(keys: Iterable[str | bytes]) -> int | None:
    """The one slot all ``keys`` share; None when there are none."""
    slot = None
    first = None
    for key in keys:
        this = key_slot(key)
        if slot is None:
            slot, first = this, key
        elif this != slot:
            raise CrossSlotKeys(
                f"keys of different cluster slots in one call: {first!r} (slot {slot}) and "
                f"{key!r} (slot {this}); give every key of one call the same hash tag"
            )
    return slot


@dataclass(frozen=True)
class ClusterNode:
    """One node of the cluster, as the slot map names it."""

    host: str
    port: int
    node_id: str = ""
    #: False when the cluster marks it failed (or about to be: ``health`` not online)
    online: bool = True

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Shard:
    """A primary, its replicas and the slot ranges (first, last) it serves."""

    primary: ClusterNode
    replicas: tuple[ClusterNode, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()


class SlotMap:
    """Which shard serves each slot."""

    def __init__(self, shards: Sequence[Shard], owners: list[Shard | None] | None = None) -> None:
        self.shards = tuple(shards)
        if owners is None:
            owners = [None] * SLOT_COUNT
            for shard in self.shards:
                for first, last in shard.ranges:
                    owners[first : last + 1] = [shard] * (last - first + 1)
        self._owners = owners
        serving = {id(shard): shard.primary for shard in owners if shard is not None}
        self._primaries = list(serving.values())
        self._uncovered = owners.count(None)

    def shard_of(self, slot: int) -> Shard | None:
        return self._owners[slot]

    def primary_of(self, slot: int) -> ClusterNode | None:
        shard = self._owners[slot]
        return shard.primary if shard is not None else None

    @property
    def primaries(self) -> list[ClusterNode]:
        """The primaries that serve at least one slot, each once."""
        return list(self._primaries)

    def uncovered(self) -> int:
        """How many slots no primary serves."""
        return self._uncovered

    def moved(self, slot: int, host: str, port: int) -> SlotMap:
        """This map with ``slot`` served by the primary at ``host:port`` (as a MOVED said)."""
        shard = next(
            (s for s in self.shards if s.primary.address == (host, port)),
            None,
        )
        shards = list(self.shards)
        if shard is None:
            shard = Shard(ClusterNode(host, port))
            shards.append(shard)
        owners = list(self._owners)
        owners[slot] = shard
        return SlotMap(shards, owners)

    @classmethod
    def from_shards(cls, reply: Sequence[Any], asked_host: str) -> SlotMap:
        """The map as ``CLUSTER SHARDS`` replies it (RESP2 lists or RESP3 maps).

        ``asked_host``: the host of the node that answered, for a node whose address
        it does not know.
        """
        shards = []
        for entry in reply:
            fields = _fields(entry)
            bounds = [int(value) for value in fields.get("slots") or ()]
            nodes = [_fields(node) for node in fields.get("nodes") or ()]
            primaries = [node for node in nodes if node.get("role") == "master"]
            if not primaries:
                continue  # its slots have no primary now
            # two primaries in a shard: a failover that the old one has not heard of yet
            primaries.sort(key=lambda node: node.get("health") != "online")
            shards.append(
                Shard(
                    _shard_node(primaries[0], asked_host),
                    tuple(_shard_node(n, asked_host) for n in nodes if n.get("role") != "master"),
                    tuple(zip(bounds[::2], bounds[1::2], strict=True)),
                )
            )
        return cls(shards)

    @classmethod
    def from_slots(cls, reply: Sequence[Any], asked_host: str) -> SlotMap:
        """The map as ``CLUSTER SLOTS`` replies it: ``[first, last, primary, *replicas]``
        per range, each node ``[host, port, id, ...]``."""
        ranges: dict[ClusterNode, list[tuple[int, int]]] = {}
        replicas: dict[ClusterNode, tuple[ClusterNode, ...]] = {}
        for first, last, primary, *copies in reply:
            node = _slots_node(primary, asked_host)
            ranges.setdefault(node, []).append((int(first), int(last)))
            replicas[node] = tuple(_slots_node(copy, asked_host) for copy in copies)
        return cls([Shard(node, replicas[node], tuple(ranges[node])) for node in ranges])


def _fields(entry: Any) -> Mapping[str, Any]:
    if isinstance(entry, Mapping):
        return entry
    return dict(zip(entry[::2], entry[1::2], strict=True))


def _usable(host: Any) -> bool:
    return isinstance(host, str) and host not in ("", "?")


def _shard_node(fields: Mapping[str, Any], asked_host: str) -> ClusterNode:
    host = next(
        (fields.get(name) for name in ("endpoint", "ip") if _usable(fields.get(name))),
        asked_host,
    )
    return ClusterNode(
        host,
        int(fields.get("port") or fields.get("tls-port")),
        str(fields.get("id", "")),
        fields.get("health", "online") == "online",
    )


def _slots_node(entry: Sequence[Any], asked_host: str) -> ClusterNode:
    host = entry[0] if _usable(entry[0]) else asked_host
    return ClusterNode(host, int(entry[1]), str(entry[2]) if len(entry) > 2 else "")


@dataclass(frozen=True)
class Redirection:
    """A node's answer that the key is served elsewhere: ``MOVED`` or ``ASK``."""

    kind: str
    slot: int
    #: empty when the node left it out: then it is the host of the node that answered
    host: str
    port: int


def parse_redirection(text: str) -> Redirection | None:
    """``MOVED 3999 127.0.0.1:6381`` (or ``ASK ...``) as a Redirection; None for
    any other error text."""
    parts = text.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return Redirection(parts[0], int(parts[1]), host, int(port))
    except ValueError:
        return None
