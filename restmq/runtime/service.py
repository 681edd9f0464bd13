"""The broker as a Twisted service: storage first, then HTTP; stopped the other way round."""

from __future__ import annotations

import atexit
import inspect
import os
import socket
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
)
from twisted.logger import Logger

from restmq import __version__, memory
from restmq.access import acl
from restmq.access.control import AccessControl
from restmq.access.tls import TLSConfigError, server_options
from restmq.budget import MemoryBudget
from restmq.delivery.census import ConsumerCensus
from restmq.delivery.consumers import ConsumerRegistry
from restmq.delivery.lease_sweeper import LeaseSweeper
from restmq.delivery.waiters import WaiterRegistry
from restmq.engine import keys
from restmq.engine.queues import DEFAULT_IDEMPOTENCY_WINDOW, QueueEngine
from restmq.metrics import Metrics
from restmq.operations.queue_operations import Operations
from restmq.operations.results import StorageState
from restmq.runtime import connection_dealer, workers
from restmq.runtime.embedded_valkey import SOCKET_NAME, DataDirError, EmbeddedValkey
from restmq.runtime.options import Options
from restmq.runtime.stop_signals import StopOnce
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from restmq.storage.cluster_client import ClusterClient
from restmq.storage.notify import Notifications
from restmq.storage.sentinel import SentinelAddress
from restmq.storage.sharded_notify import ShardedNotifications
from restmq.web.app import BrokerApplication

log = Logger(namespace="restmq")

STOP_GRACE = 3.0  # seconds a stop gives open answers and streams to go out
WORKERS_START_TIMEOUT = 30.0  # seconds the main process waits for its workers to serve
EMBEDDED = "embedded Valkey"  # the kind of storage the dashboard shows


def _socket_kind(options: Options) -> str:
    """A worker of a broker on the embedded Valkey is handed that Valkey's socket."""
    embedded = os.path.join(options["data-dir"], SOCKET_NAME)
    return EMBEDDED if options.is_worker and options["redis-socket"] == embedded else "Redis"


#: one step of the service's start or stop: what it is, and what to call
Step = tuple[str, Callable[[], object] | None]


class Broker:
    """What the handlers reach through ``application.broker``: the operations, and acl."""

    def __init__(
        self,
        redis: RedisClient,
        engine: QueueEngine,
        consumers: ConsumerRegistry,
        access: AccessControl | None = None,
        budget: MemoryBudget | None = None,
        waiters: WaiterRegistry | None = None,
        idempotency_window: int = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> None:
        self.redis = redis
        # request bodies in flight and consumer backlogs, together (--max-buffered)
        self.budget = budget if budget is not None else consumers.budget
        self.consumers = consumers
        self.access = access or AccessControl(None)
        self.operations = Operations(
            engine,
            consumers,
            self.describe_storage,
            waiters=waiters,
            storage_state=self.storage,
            idempotency_window=idempotency_window,
        )

    def describe_storage(self) -> str:
        """The ``redis`` field of /stats and /control."""
        where = self.redis.address.describe()
        if not self.redis.connected:
            return f"<Redis Connection: {where} - not connected>"
        return f"<Redis Connection: {where} - {self.redis.pool_size_now} connection(s)>"

    def storage(self) -> StorageState:
        """The storage as the dashboard shows it (the ``storage`` of each stats event)."""
        address = self.redis.address
        return StorageState(address.kind, address.describe(), self.redis.pool_size_now)

    def access_is_open(self, section: str) -> bool:
        """True when acl.conf sets no rule for ``section`` (the common, fast case)."""
        return not self.access.rules.section(section).has_rules

    def check_access_async(self, request, section: str) -> defer.Deferred:
        """A Deferred that fails with ``acl.Refused`` (401/403) unless acl.conf's
        ``section`` lets ``request`` through; each front end answers the refusal its way.

        The Deferred has fired already unless a scrypt password not seen lately must be
        checked: that runs in a worker thread, so a flood of wrong passwords cannot stall
        the broker.
        """
        return self.access.check_later(request, section)


class BrokerService(service.Service):
    """Starts storage, waits until it answers, then opens the HTTP port."""

    name = "restmq"

    def __init__(self, options: Options, reactor) -> None:
        self.options = options
        self.reactor = reactor
        self.valkey: EmbeddedValkey | None = None
        if options.embedded:
            self.valkey = EmbeddedValkey(options["data-dir"], reactor, fsync=options["fsync"])
            address = RedisAddress(socket=self.valkey.socket_path, kind=EMBEDDED)
        elif options["redis-cluster"]:
            address = None
        elif options["redis-sentinel"]:
            address = SentinelAddress.create(
                reactor, options["redis-sentinel"], options["redis-service"]
            )
        elif options["redis-socket"]:
            address = RedisAddress(socket=options["redis-socket"], kind=_socket_kind(options))
        else:
            address = RedisAddress(host=options["redis-host"], port=options["redis-port"])
        if address is None:
            self.redis = ClusterClient(
                reactor,
                options["redis-cluster"],
                poolsize=options["redis-pool"],
                password=options["redis-password"],
                call_timeout=options["redis-timeout"],
                wait_replicas=options["redis-wait-replicas"],
            )
            self.engine = engine = QueueEngine(self.redis, keys.CLUSTER)
        else:
            self.redis = RedisClient(
                reactor,
                address,
                poolsize=options["redis-pool"],
                dbid=options["redis-db"],
                password=options["redis-password"],
                call_timeout=options["redis-timeout"],
                wait_replicas=options["redis-wait-replicas"],
            )
            self.engine = engine = QueueEngine(self.redis)
        # this broker's counters and gauges (GET /metrics); Operations counts in the
        # consumers' Metrics
        self.metrics = Metrics(max_queues=options["metrics-max-queues"])
        self.redis.observe_call = self.metrics.redis_call
        budget = MemoryBudget(options["max-buffered"])
        self.consumers = ConsumerRegistry(
            engine,
            reactor,
            max_consumers=options["max-consumers"],
            max_backlog=options["consumer-buffer"],
            heartbeat_interval=options["sse-heartbeat"],
            budget=budget,
            metrics=self.metrics,
        )
        self.waiters = WaiterRegistry(engine, reactor)
        if address is None:
            self.notifications = ShardedNotifications(
                reactor,
                self.redis,
                self._on_notice,
                password=options["redis-password"],
                on_reconnect=self._on_reconnect,
            )
        else:
            self.notifications = Notifications(
                reactor,
                address,
                self._on_notice,
                password=options["redis-password"],
                on_reconnect=self._on_reconnect,
            )
        self.consumers.attach(self.notifications)
        self.waiters.attach(self.notifications)
        if isinstance(address, SentinelAddress):
            # The pool found the master elsewhere: pub/sub must leave the old one too.
            address.locator.on_move(lambda master: self.notifications.reconnect())
        self.access = AccessControl(
            options["acl"] or None,
            required=options["acl-given"],
            trusted_proxies=options["trusted-proxies"],
        )
        self.broker = Broker(
            self.redis,
            engine,
            self.consumers,
            self.access,
            budget,
            waiters=self.waiters,
            idempotency_window=options["idempotency-window"],
        )
        self.lease_sweeper = LeaseSweeper(engine, reactor, metrics=self.metrics)
        # This process's consumer counts, kept in Redis for everyone's /stats/.
        self.census = ConsumerCensus(engine, self.consumers, reactor)
        self.workers: workers.WorkerPool | None = None
        # --workers: the listening socket, made before the workers start
        self._listening: socket.socket | None = None
        self.application = BrokerApplication(
            self.broker,
            max_body=options["max-body"],
            header_timeout=options["header-timeout"],
            max_header_bytes=options["max-header-bytes"],
            max_headers=options["max-headers"],
        )
        self.tls = None
        self.port = None
        self._starting: defer.Deferred | None = None
        self._workers_stopping: defer.Deferred | None = None
        self.stop_once = StopOnce(reactor)  # a second Ctrl-C during a stop is only noted

    def prepare(self) -> None:
        """Checks that must pass before twistd goes on (run from makeService)."""
        if self.options.is_worker:
            workers.become_worker()
        # Configuration first: a broken acl.conf or certificate must not touch the data dir.
        self.access.load()
        if self.options["tls-cert"]:
            self.tls = server_options(self.options["tls-cert"], self.options["tls-key"])
        if self.valkey is not None:
            self.valkey.prepare()

    # -- the order of things -------------------------------------------------

    def start_order(self) -> list[Step]:
        """What the service starts, in this order: storage first, the HTTP port last.

        A step may return a Deferred or a coroutine; the next one waits for it. A step
        without a callable is one this broker has not (no embedded Valkey, no workers).
        """
        return [
            ("acl.conf watcher", self._watch_acl),
            ("embedded Valkey", self._start_valkey if self.valkey is not None else None),
            ("Redis", self._connect_redis),
            ("pub/sub", self.notifications.start),
            ("streaming consumers", self.consumers.start),
            ("long-poll waiters", self.waiters.start),
            ("lease sweeper", self.lease_sweeper.start),
            ("consumer census", self.census.start),
            # --workers: the listening socket is made first (a port in use fails the
            # start), and this process accepts and deals connections once every worker
            # serves, so that the first answer finds them all serving (see workers.py)
            ("listening socket", self._make_socket if self.workers_wanted else None),
            ("workers", self._start_workers if self.workers_wanted else None),
            ("HTTP port", self._open_port),
        ]

    def stop_order(self) -> list[Step]:
        """What the service stops, in this order: the start order reversed, except where
        a comment says why not. This order is what lets a stop lose nothing acknowledged."""
        pool = self.workers
        return [
            # Out of order: acl.conf is not reloaded while the broker stops.
            ("acl.conf watcher", self.access.stop_watching),
            # Out of order: the workers begin the same stop now, all together; the
            # storage waits for their end (below).
            ("workers", self._begin_stopping_workers if pool is not None else None),
            ("HTTP port", self._close_port),  # no new request from here on
            # Started by its first watcher, not here; dashboards see the broker go.
            ("stats feed", self.broker.operations.stats_feed.stop),
            ("long-poll waiters", self.waiters.stop),  # answered 204 at once
            # Streams take no new batch, hand out or put back what they hold, and end.
            ("streaming consumers", lambda: self.consumers.stop(STOP_GRACE)),
            # Out of order: after the streams, so that other brokers count none of ours.
            ("consumer census", self.census.stop),
            # Out of order: the answers and the streams' last bytes go out before
            # Redis is let go.
            ("HTTP connections", self._drain_connections),
            # Out of order: it makes Redis calls, which the next step waits for.
            ("lease sweeper", self.lease_sweeper.stop),
            ("Redis calls under way", self._finish_redis_calls),
            ("pub/sub", self.notifications.stop),
            ("Redis", self.redis.disconnect),
            ("workers, waited for", self._workers_stopped if pool is not None else None),
            ("embedded Valkey", self.valkey.stop if self.valkey is not None else None),
        ]

    # -- start ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        log.info("RestMQ {version} starting", version=__version__)
        # Large request bodies must not stay resident once they are freed (see memory.py).
        memory.keep_large_blocks_on_mmap()
        if self.valkey is not None:
            log.info(
                "storage: embedded Valkey, data dir {dir}, appendfsync {fsync}",
                dir=self.options["data-dir"],
                fsync=self.valkey.fsync,
            )
        elif self.options.is_worker:
            log.info("storage: the main process's, {where}", where=self.redis.address.describe())
        elif self.options["redis-cluster"]:
            log.info("storage: Valkey Cluster, seed nodes {where} (cluster key layout)",
                     where=self.redis.address.describe())  # fmt: skip
        else:
            log.info("storage: external Redis at {where}", where=self.redis.address.describe())
        self.reactor.callWhenRunning(self.stop_once.take_signals)
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)

    async def _start(self) -> None:
        for _name, start in self.start_order():
            if start is not None:
                await _waitable(start())
        memory.tune_garbage_collector()  # everything long-lived is built by now

    def _watch_acl(self) -> None:
        self.access.start_watching(self.reactor)

    async def _start_valkey(self) -> None:
        self.valkey.start()
        await self.valkey.wait_for_socket()

    async def _connect_redis(self) -> None:
        self.redis.connect()
        await self.redis.wait_until_ready()

    async def _open_port(self) -> None:
        self.port = await self._listen()
        if self.options.is_worker:
            log.info("worker {pid} {serving}", pid=os.getpid(), serving=workers.SERVING)
            return
        address = self.port.getHost()
        host = f"[{address.host}]" if ":" in address.host else address.host
        scheme = "https" if self.tls is not None else "http"
        log.info(
            "RestMQ listening on {scheme}://{host}:{port}/",
            scheme=scheme,
            host=host,
            port=address.port,
        )

    async def _listen(self):
        """The HTTP port: opened here; with --workers, the main process's dealer of
        connections, or a worker's inbox of those dealt to it."""
        interface = self.options["listen"]
        if self.options.is_worker:
            inbox = connection_dealer.Inbox(
                self.reactor, self.options["worker-fd"], interface, self.application, self.tls
            )
            inbox.start()
            return inbox
        if self._listening is not None:
            outboxes = self.workers.outboxes if self.workers is not None else []
            dealer = connection_dealer.Dealer(
                self.reactor, self._listening, self.application, self.tls, outboxes
            )
            self._listening = None  # the dealer's now
            dealer.start()
            return dealer
        if self.tls is not None:
            endpoint = SSL4ServerEndpoint(
                self.reactor, self.options["port"], self.tls, interface=interface
            )
        else:
            endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
            endpoint = endpoint_type(self.reactor, self.options["port"], interface=interface)
        return await endpoint.listen(self.application)

    @property
    def workers_wanted(self) -> bool:
        """True in the main process of a broker run with --workers N>1."""
        return self.options["workers"] > 1

    def _make_socket(self) -> None:
        self._listening = connection_dealer.listening_socket(
            self.options["port"], self.options["listen"]
        )

    async def _start_workers(self) -> None:
        storage = self.valkey.socket_path if self.valkey is not None else None
        self.workers = workers.WorkerPool(
            self.reactor,
            self.options["workers"] - 1,
            lambda fd: workers.worker_command(self.options.arguments, fd, storage),
            self.options.directory,
        )
        self.workers.start()
        # Until then connections wait in the listening socket's backlog: none is
        # refused, and none is kept by this process for want of another one serving.
        serving = self.workers.every_one_serving()
        serving.addTimeout(WORKERS_START_TIMEOUT, self.reactor)
        try:
            await serving
        except defer.TimeoutError:
            # a worker that keeps dying must not keep the broker from serving at all
            log.warn(
                "not every worker serves after {n} s; accepting here anyway",
                n=WORKERS_START_TIMEOUT,
            )

    def _on_notice(self, channel: str, message: str) -> None:
        """A queue's channel speaks: streaming consumers and long-poll waiters listen."""
        self.consumers.on_notice(channel, message)
        self.waiters.on_notice(channel, message)

    def _on_reconnect(self) -> None:
        # Notices published while pub/sub was away are gone: everyone looks again.
        self.consumers.sweep()
        self.waiters.sweep()

    def _start_failed(self, failure) -> None:
        if failure.check(defer.CancelledError):
            return
        log.critical("RestMQ could not start: {error}", error=failure.getErrorMessage())
        # twistd has no way to report a failed start in its exit status; do it here.
        atexit.register(os._exit, 1)
        self.stop_once.stop()

    # -- stop ----------------------------------------------------------------

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """Walk ``stop_order``: nothing acknowledged is lost, in a few seconds at most.

        A step that fails is logged and the next one runs: the storage must still be
        let go properly.
        """
        for name, stop in self.stop_order():
            if stop is None:
                continue
            log.debug("stopping: {name}", name=name)
            try:
                await _waitable(stop())
            except Exception:
                # twistd would drop a failed stop without a word
                log.failure("RestMQ could not stop {name} cleanly", name=name)
        log.info("RestMQ stopped")

    def _begin_stopping_workers(self) -> None:
        # Dealing stops first: each worker then takes what was dealt to it, and stops.
        if self.port is not None:
            self.port.stopListening()
        self._workers_stopping = self.workers.stop()

    def _workers_stopped(self) -> defer.Deferred | None:
        return self._workers_stopping

    async def _close_port(self) -> None:
        if self._listening is not None:  # the start failed before the dealer took it
            self._listening.close()
            self._listening = None
        if self.port is None:
            return
        await defer.maybeDeferred(self.port.stopListening)  # None if closed already
        connections = self.application.connections
        connections.stop()  # idle kept-alive connections close; the others after their answer
        log.info("HTTP port closed; finishing {n} open connection(s)", n=len(connections))

    async def _drain_connections(self) -> None:
        timeout = max(STOP_GRACE, self.redis.call_timeout + 1)
        await self.application.connections.wait_closed(self.reactor, timeout)

    async def _finish_redis_calls(self) -> None:
        """Acks gathered this turn go out, then late replies still due (a batch taken
        for a stream, say) are handled, before the connections close."""
        self.engine.send_waiting_acks()
        idle = self.redis.when_idle()
        timer = self.reactor.callLater(self.redis.call_timeout + 0.5, idle.cancel)
        try:
            await idle
        except defer.CancelledError:
            log.warn("closing storage with Redis calls still unanswered")
        else:
            if timer.active():
                timer.cancel()


def _waitable(result: object) -> defer.Deferred:
    """What a start or stop step returned (None, a Deferred or a coroutine), to wait on."""
    if inspect.iscoroutine(result):
        return defer.ensureDeferred(result)
    if isinstance(result, defer.Deferred):
        return result
    return defer.succeed(result)


def make_service(options: Options, reactor=None) -> BrokerService:
    """Build the broker service; exits with a clear message when it cannot run."""
    if reactor is None:
        from twisted.internet import reactor
    broker = BrokerService(options, reactor)
    try:
        broker.prepare()
    except (DataDirError, acl.AclError, TLSConfigError) as exc:
        raise SystemExit(f"restmq: {exc}") from None
    return broker
