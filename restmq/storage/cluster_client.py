"""The broker's Redis calls on a Valkey Cluster: each goes to the primary serving its slot.

``ClusterClient`` offers what ``RedisClient`` offers (``run_script``, ``execute``,
``connect``, ``wait_until_ready``...) over one ``RedisClient`` per primary, so every call
keeps the standalone client's promises: it fails at once with StorageUnavailable when it
cannot be sent, with OutcomeUnknown when a write was sent and its answer lost, and loads
a Lua script only where it is missing.

- A script goes by the slot of its keys, which must all share one (one hash tag): a
  call naming two is a programming error (``CrossSlotKeys``), refused before anything
  is sent. A command goes by its ``key=``; a command without keys (PING, INFO...) to any
  primary, or to every one with ``on_every_primary``.
- The slot map is read from the first node that answers ``CLUSTER SHARDS`` (``CLUSTER
  SLOTS`` on servers without it). ``MOVED``: the slot has a new owner; the call goes
  there and the map is read again. ``ASK``: the slot is being migrated and the key went
  over already; the call goes to the importing node right behind ``ASKING``. A call
  follows at most ``MAX_REDIRECTS`` of them.
- A primary whose connections all drop may be failing over: its slots answer
  StorageUnavailable at once (never wait), and the map is read again every
  ``REREAD_INTERVAL`` seconds until every slot has a reachable primary, the promoted
  replica then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import txredisapi
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import failure

from restmq.errors import OutcomeUnknown, StorageUnavailable
from restmq.storage.address import RedisAddress
from restmq.storage.client import LuaScript, RedisClient
from restmq.storage.cluster_slots import SlotMap, common_slot, key_slot, parse_redirection

log = Logger(namespace="restmq.storage")

MAX_REDIRECTS = 5
REREAD_INTERVAL = 0.25  # seconds between slot map reads while a slot lacks a live primary

Address = tuple[str, int]
#: What a node says when a script reaches a key its slot has not here, the slot moving
#: (a key that is not declared cannot be redirected: the script stops at that call).
_SLOT_MOVING_IN_SCRIPT = ("non local key in a cluster node script", "during rehashing of the slot")

#: sends one call on a node's client; ``asking``: right behind ASKING
Send = Callable[[RedisClient, bool], defer.Deferred]

# Commands without keys: they may go to any primary.
_KEYLESS = frozenset(
    {"PING", "ECHO", "INFO", "TIME", "DBSIZE", "SCAN", "CLUSTER", "ROLE", "WAIT", "CONFIG",
     "SCRIPT", "FUNCTION", "LASTSAVE", "MEMORY", "RANDOMKEY", "FLUSHALL", "FLUSHDB"}
)  # fmt: skip


class UnroutedCommand(ValueError):
    """A command that names keys was sent without ``key=``: no node can be chosen for it."""


@dataclass(frozen=True)
class ClusterAddress:
    """Where the cluster is: the seed nodes a client starts from."""

    seeds: tuple[Address, ...]
    kind: str = "Valkey Cluster"
    master_only = False

    def describe(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.seeds)

    def endpoint(self, reactor, timeout: float):
        # pub/sub: what is published on one node reaches the subscribers of every node
        host, port = self.seeds[0]
        return HostnameEndpoint(reactor, host, port, timeout=timeout)


def parse_seeds(text: str) -> tuple[Address, ...]:
    """``host:port[,host:port...]`` as addresses; ValueError saying what is wrong."""
    seeds = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port (a cluster node's address)")
        seeds.append((host.strip("[]"), int(port)))
    if not seeds:
        raise ValueError("no cluster node given: list host:port of one or more nodes")
    return tuple(seeds)


class ClusterClient:
    """Every Redis call the broker makes, routed over a Valkey Cluster."""

    def __init__(
        self,
        reactor: IReactorTime,
        seeds: Sequence[Address],
        *,
        poolsize: int = 10,
        password: str | None = None,
        call_timeout: float = 1.5,
        max_inflight: int = 1000,
        wait_replicas: int = 0,
    ) -> None:
        self.reactor = reactor
        self.address = ClusterAddress(tuple(seeds))
        self.call_timeout = call_timeout
        self.wait_replicas = wait_replicas
        self.poolsize = poolsize
        self.dbid = 0  # a cluster has only database 0
        self._password = password
        self._max_inflight = max_inflight
        #: which primary serves each slot, as last read (and corrected by MOVED)
        self.slot_map: SlotMap | None = None
        self._clients: dict[Address, RedisClient] = {}  # the primaries'
        self._born: dict[Address, float] = {}  # when each was made (it needs time to connect)
        self._was_up: set[Address] = set()  # those that have connected: lost, they fail fast
        self._connect_waiters: dict[Address, list[defer.Deferred]] = {}
        self._seeds: dict[Address, RedisClient] = {}  # one connection each, to read the map
        self._reading: list[defer.Deferred] | None = None
        self._last_read = float("-inf")
        self._reread = None
        self._closing = False
        self._observe_call: Callable[[str, float], None] | None = None
        self._map_readers: list[Callable[[SlotMap], None]] = []

    # -- life cycle ---------------------------------------------------------

    def connect(self) -> None:
        self._closing = False
        for host, port in self.address.seeds:
            self._seeds[(host, port)] = self._new_client((host, port), poolsize=1)

    def disconnect(self) -> defer.Deferred:
        self._closing = True
        if self._reread is not None and self._reread.active():
            self._reread.cancel()
        clients = [*self._clients.values(), *self._seeds.values()]
        self._clients, self._seeds = {}, {}
        return defer.gatherResults([client.disconnect() for client in clients])

    def when_idle(self) -> defer.Deferred:
        """Fires once no call is waiting for any node."""
        return defer.gatherResults([client.when_idle() for client in self._clients.values()])

    @property
    def connected(self) -> bool:
        """Every slot has a primary, and a connection to it is up."""
        slots = self.slot_map
        if slots is None or slots.uncovered():
            return False
        return all(self._is_up(node.address) for node in slots.primaries)

    @property
    def pool_size_now(self) -> int:
        """How many connections to primaries are up."""
        return sum(client.pool_size_now for client in self._clients.values())

    @property
    def refusal(self) -> str | None:
        """Why a node refused our AUTH, if one did."""
        clients = [*self._clients.values(), *self._seeds.values()]
        return next((client.refusal for client in clients if client.refusal), None)

    @property
    def observe_call(self) -> Callable[[str, float], None] | None:
        return self._observe_call

    @observe_call.setter
    def observe_call(self, observe: Callable[[str, float], None] | None) -> None:
        self._observe_call = observe
        for client in self._clients.values():
            client.observe_call = observe

    async def wait_until_ready(self, poll_interval: float = 0.05, log_every: float = 5.0) -> None:
        """Return once every slot has a primary that answers with its data loaded."""
        waited, next_log = 0.0, log_every
        while True:
            if self.refusal is not None:
                raise StorageUnavailable(
                    f"the Valkey Cluster at {self.address.describe()} refused RestMQ: "
                    f"{self.refusal}"
                )
            try:
                await self.read_map()
                if self.connected:
                    infos = await self.on_every_primary("INFO", "persistence")
                    if all("loading:0" in info for info in infos.values()):
                        return
            except (StorageUnavailable, OutcomeUnknown):
                pass
            await task.deferLater(self.reactor, poll_interval, lambda: None)
            waited += poll_interval
            if waited >= next_log:
                log.info("still waiting for the Valkey Cluster at {where} ({seconds:.0f} s)",
                         where=self.address.describe(), seconds=waited)  # fmt: skip
                next_log += log_every

    # -- calls --------------------------------------------------------------

    def run_script(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[Any] = (),
        on_late: Callable[[Any], object] | None = None,
        *,
        replicated: bool = False,
    ) -> defer.Deferred:
        """``RedisClient.run_script`` on the primary serving ``keys``, which must share
        one slot (else CrossSlotKeys, raised at once); without keys on any primary."""
        slot = common_slot(keys)

        def send(client: RedisClient, asking: bool) -> defer.Deferred:
            return client.run_script(
                script, keys, args, on_late, replicated=replicated, asking=asking
            )

        return self._route(self._any_slot() if slot is None else slot, send)

    def execute(self, *command: Any, key: str | bytes | None = None) -> defer.Deferred:
        """``RedisClient.execute`` on the primary serving ``key`` (every key the command
        names must share its slot); a command without keys goes to any primary."""
        if key is None and str(command[0]).upper() not in _KEYLESS:
            raise UnroutedCommand(
                f"{command[0]} names keys: say which decides its node with key=..."
            )

        def send(client: RedisClient, asking: bool) -> defer.Deferred:
            return client.execute(*command, asking=asking)

        return self._route(self._any_slot() if key is None else key_slot(key), send)

    def on_every_primary(self, *command: Any) -> defer.Deferred:
        """A command without keys run on every primary; replies by ``"host:port"``."""
        return self.each_primary(lambda client: client.execute(*command))

    def each_primary(self, call: Callable[[RedisClient], defer.Deferred]) -> defer.Deferred:
        """``call(client)`` for the client of every primary; results by ``"host:port"``.
        Fails (StorageUnavailable) when some slot has no reachable primary."""

        async def run() -> dict[str, Any]:
            if self.slot_map is None:
                await self.read_map()
            slots = self.slot_map
            if slots.uncovered():
                self._reread_soon()
                raise StorageUnavailable(
                    f"storage unavailable: {slots.uncovered()} slots of the Valkey Cluster "
                    "have no primary now; retry"
                )
            nodes = slots.primaries
            clients = [await self._ready(node.address, "some slots") for node in nodes]
            try:
                replies = await defer.gatherResults(
                    [call(client) for client in clients], consumeErrors=True
                )
            except defer.FirstError as error:
                error.subFailure.raiseException()
            return {node.describe(): reply for node, reply in zip(nodes, replies, strict=True)}

        return defer.ensureDeferred(run())

    # -- routing ------------------------------------------------------------

    def _route(self, slot: int, send: Send) -> defer.Deferred:
        node = self.slot_map.primary_of(slot) if self.slot_map is not None else None
        if node is not None and self._is_up(node.address):
            reply = send(self._clients[node.address], False)
            return reply.addErrback(self._redirected, send, 0, node.host)
        return defer.ensureDeferred(self._route_once_known(slot, send))

    async def _route_once_known(self, slot: int, send: Send) -> Any:
        if self.slot_map is None:
            await self.read_map()
        node = self.slot_map.primary_of(slot)
        if node is None:
            self._reread_soon()
            raise StorageUnavailable(
                f"storage unavailable: no primary of the Valkey Cluster serves slot {slot} "
                "now; nothing was sent, retry"
            )
        client = await self._ready(node.address, f"slot {slot}")
        return await send(client, False).addErrback(self._redirected, send, 0, node.host)

    def _any_slot(self) -> int:
        """A slot whose primary is connected, for a call that may go anywhere."""
        for shard in self.slot_map.shards if self.slot_map is not None else ():
            if shard.ranges and self._is_up(shard.primary.address):
                return shard.ranges[0][0]
        return 0

    def _redirected(self, reason: failure.Failure, send: Send, hops: int, host: str) -> Any:
        reason.trap(txredisapi.ResponseError)
        redirect = parse_redirection(str(reason.value))
        if redirect is None:
            if any(words in str(reason.value) for words in _SLOT_MOVING_IN_SCRIPT):
                self._reread_soon()
                raise StorageUnavailable(
                    "storage unavailable: the slot of these keys is being moved to another "
                    f"node of the Valkey Cluster, retry ({str(reason.value)[:120]})"
                )
            return reason
        target = (redirect.host or host, redirect.port)
        if hops >= MAX_REDIRECTS:
            raise StorageUnavailable(
                f"storage unavailable: the Valkey Cluster redirected a call {hops + 1} times "
                f"(last: {redirect.kind} slot {redirect.slot} to {target[0]}:{target[1]}); "
                "its slots are moving, retry"
            )
        if redirect.kind == "MOVED":
            self.slot_map = (self.slot_map or SlotMap([])).moved(redirect.slot, *target)
            self._reread_soon()  # other slots may have moved with it
        return defer.ensureDeferred(self._follow(redirect.kind, target, send, hops + 1))

    async def _follow(self, kind: str, target: Address, send: Send, hops: int) -> Any:
        client = await self._ready(target, f"a slot it was {kind}-redirected to")
        reply = send(client, kind == "ASK")
        return await reply.addErrback(self._redirected, send, hops, target[0])

    # -- clients of the nodes -----------------------------------------------

    def _new_client(self, address: Address, poolsize: int) -> RedisClient:
        client = RedisClient(
            self.reactor,
            RedisAddress(host=address[0], port=address[1]),
            poolsize=poolsize,
            password=self._password,
            call_timeout=self.call_timeout,
            max_inflight=self._max_inflight,
            wait_replicas=self.wait_replicas,
        )
        client.connect()
        return client

    def _client_at(self, address: Address) -> RedisClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._new_client(address, self.poolsize)
            client.observe_call = self._observe_call
            client.on_connection_change = lambda up: self._connection_changed(address, up)
            self._born[address] = time.monotonic()
        return client

    def _is_up(self, address: Address) -> bool:
        client = self._clients.get(address)
        return client is not None and client.connected

    async def _ready(self, address: Address, serves: str) -> RedisClient:
        """The connected client of the node at ``address``; StorageUnavailable at once
        when it was connected and is no more, or after ``call_timeout`` for a new one."""
        client = self._client_at(address)
        if client.connected:
            return client
        left = self._born[address] + self.call_timeout - time.monotonic()
        if left > 0 and client.refusal is None and address not in self._was_up:
            waiter = defer.Deferred()
            self._connect_waiters.setdefault(address, []).append(waiter)
            timer = self.reactor.callLater(left, waiter.callback, None)
            await waiter
            if timer.active():
                timer.cancel()
            if client.connected and self._clients.get(address) is client:
                return client
        self._reread_soon()  # it may have failed over: find who serves its slots now
        why = f"refused RestMQ: {client.refusal}" if client.refusal else "is unreachable"
        raise StorageUnavailable(
            f"storage unavailable: the Valkey Cluster node at {address[0]}:{address[1]}, "
            f"which serves {serves}, {why}; nothing was sent to it, retry"
        )

    def _connection_changed(self, address: Address, up: bool) -> None:
        if up:
            self._was_up.add(address)
            for waiter in self._connect_waiters.pop(address, []):
                if not waiter.called:
                    waiter.callback(None)
        elif not self._closing:
            self._reread_soon()  # a primary gone: a replica may be taking over

    # -- the slot map -------------------------------------------------------

    def read_map(self) -> defer.Deferred:
        """Read the slot map now (one read at a time: a caller during a read gets its
        result); fails with StorageUnavailable when no node answers."""
        answer = defer.Deferred()
        if self._reading is None:
            self._reading = [answer]
            defer.ensureDeferred(self._read_map()).addBoth(self._map_read)
        else:
            self._reading.append(answer)
        return answer

    def _map_read(self, outcome: Any) -> None:
        waiting, self._reading = self._reading or [], None
        self._last_read = time.monotonic()
        for answer in waiting:
            if isinstance(outcome, failure.Failure):
                answer.errback(outcome)
            else:
                answer.callback(outcome)
        if not self._closing and not self.connected:
            self._reread_soon()

    async def _read_map(self) -> SlotMap:
        sources = [*self._clients.values(), *self._seeds.values()]
        for client in sorted(sources, key=lambda client: not client.connected):
            host = client.address.host
            try:
                try:
                    slots = SlotMap.from_shards(await client.execute("CLUSTER", "SHARDS"), host)
                except txredisapi.ResponseError as error:
                    if "unknown subcommand" not in str(error).lower():
                        raise
                    slots = SlotMap.from_slots(await client.execute("CLUSTER", "SLOTS"), host)
            except (StorageUnavailable, OutcomeUnknown, txredisapi.ResponseError):
                continue
            self._install(slots)
            return slots
        raise StorageUnavailable(
            f"storage unavailable: no node of the Valkey Cluster at {self.address.describe()} "
            "answers; nothing was sent, retry"
        )

    def _install(self, slots: SlotMap) -> None:
        if self._closing:
            return  # a read that ended after disconnect(): connect to nothing more
        before = self.slot_map
        self.slot_map = slots
        wanted = {node.address for node in slots.primaries}
        for address in wanted:
            self._client_at(address)
        for address in set(self._clients) - wanted:
            # no longer a primary: let what it was sent finish, then close it
            client = self._clients.pop(address)
            client.on_connection_change = None
            self._born.pop(address, None)
            self._was_up.discard(address)
            client.when_idle().addCallback(lambda _, client=client: client.disconnect())
        if before is None or {n.address for n in before.primaries} != wanted:
            log.info("Valkey Cluster primaries: {nodes}",
                     nodes=", ".join(sorted(f"{h}:{p}" for h, p in wanted)))  # fmt: skip
        for callback in list(self._map_readers):
            try:
                callback(slots)
            except Exception:
                log.failure("a slot map reader failed")

    def on_map_read(self, callback: Callable[[SlotMap], None]) -> Callable[[], None]:
        """Call ``callback(slot_map)`` after every read of the slot map (it may not have
        changed); returns the function that stops these calls."""
        self._map_readers.append(callback)

        def stop() -> None:
            if callback in self._map_readers:
                self._map_readers.remove(callback)

        return stop

    def _reread_soon(self) -> None:
        """Read the map again, at most once per ``REREAD_INTERVAL``."""
        if self._closing or (self._reread is not None and self._reread.active()):
            return
        delay = max(0.0, self._last_read + REREAD_INTERVAL - time.monotonic())
        self._reread = self.reactor.callLater(delay, self._reread_now)

    def _reread_now(self) -> None:
        self._reread = None
        self.read_map().addErrback(lambda _: None)  # _map_read tries again while not whole
