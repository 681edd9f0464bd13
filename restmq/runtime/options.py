"""Command-line options of ``twistd restmq``."""

from __future__ import annotations

import os
import sys

from twisted.python import usage

from restmq import __version__
from restmq.access.acl import AclError
from restmq.access.clients import parse_trusted_proxies
from restmq.defaults import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_BUFFERED,
    DEFAULT_MAX_CONSUMERS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    DEFAULT_METRICS_MAX_QUEUES,
    DEFAULT_PORT,
    DEFAULT_REDIS_PORT,
)
from restmq.engine.queues import DEFAULT_IDEMPOTENCY_WINDOW
from restmq.runtime.embedded_valkey import DEFAULT_FSYNC, FSYNC_POLICIES
from restmq.storage.cluster_client import parse_seeds
from restmq.storage.sentinel import parse_sentinels


class GivenPath(str):
    """A path typed on the command line (a default stays a plain str)."""


def _positive_int(name: str):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} takes a whole number, not {value!r}") from None
        if number <= 0:
            raise usage.UsageError(f"--{name} must be greater than 0, not {number}")
        return number

    return parse


def _port(name: str):
    def parse(value: str) -> int:
        number = _positive_int(name)(value)
        if number > 65535:
            raise usage.UsageError(f"--{name} must be a TCP port (1-65535), not {number}")
        return number

    return parse


def _non_negative_int(name: str):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} takes a whole number, not {value!r}") from None
        if number < 0:
            raise usage.UsageError(f"--{name} cannot be negative")
        return number

    return parse


def _workers(value: str) -> int:
    """``--workers``: a count of processes, or ``auto`` for one per core."""
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return _positive_int("workers")(value)


def _fsync(value: str) -> str:
    """``--fsync``: one of Valkey's ``appendfsync`` policies."""
    policy = value.strip().lower()
    if policy not in FSYNC_POLICIES:
        raise usage.UsageError(
            f"--fsync takes {', '.join(FSYNC_POLICIES[:-1])} or {FSYNC_POLICIES[-1]}, not {value!r}"
        )
    return policy


def _positive_float(name: str):
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} takes a number of seconds, not {value!r}") from None
        if not number > 0:
            raise usage.UsageError(f"--{name} must be greater than 0")
        return number

    return parse


class Options(usage.Options):
    """Options of the ``restmq`` twistd plugin."""

    synopsis = "[options]"
    longdesc = (
        "RestMQ: a message broker over HTTP/JSON that keeps its queues in Redis. "
        "With none of --redis-host, --redis-port, --redis-socket, --redis-sentinel or "
        "--redis-cluster, RestMQ starts an embedded Valkey server that stores its data under "
        "--data-dir; otherwise it uses the Redis or Valkey server (or cluster) you name."
    )

    optParameters = [
        [
            "acl",
            None,
            "acl.conf",
            "access control file for the endpoints (INI format); when the default file is "
            "missing every route is open, a file named here must exist",
            GivenPath,
        ],
        [
            "trusted-proxies",
            None,
            None,
            "addresses or networks (comma-separated, e.g. 127.0.0.1,10.0.0.0/8) of reverse "
            "proxies whose X-Forwarded-For / X-Real-IP headers are believed "
            "[default: none, the socket peer is the client]",
        ],
        ["redis-host", None, None, "hostname or IP address of an external Redis/Valkey server"],
        [
            "redis-port",
            None,
            None,
            f"port of the external Redis/Valkey server [default: {DEFAULT_REDIS_PORT}]",
            _port("redis-port"),
        ],
        ["redis-socket", None, None, "unix socket path of an external Redis/Valkey server"],
        [
            "redis-sentinel",
            None,
            None,
            "Sentinel addresses (host:port[,host:port...], port 26379 by default): find the "
            "Redis master of --redis-service through them, and follow it when it fails over",
        ],
        [
            "redis-cluster",
            None,
            None,
            "seed nodes of a Valkey/Redis Cluster (host:port[,host:port...]): spread the "
            "queues over its shards, each queue's keys in one slot (message keys are then "
            "{queue}:<n>); follow MOVED/ASK and failovers",
        ],
        [
            "redis-service",
            None,
            None,
            "the master name the sentinels watch (with --redis-sentinel)",
        ],
        ["redis-password", None, None, "password for the Redis server (AUTH)"],
        ["redis-pool", None, 10, "Redis connection pool size", _positive_int("redis-pool")],
        ["redis-db", None, 0, "Redis database number", _non_negative_int("redis-db")],
        [
            "redis-timeout",
            None,
            1.5,
            "seconds to wait for Redis before a request answers 503",
            _positive_float("redis-timeout"),
        ],
        [
            "redis-wait-replicas",
            None,
            0,
            "answer an add or an ack only once this many replicas have it (Redis WAIT, up to "
            "--redis-timeout; otherwise 504 'not replicated'); 0: do not wait",
            _non_negative_int("redis-wait-replicas"),
        ],
        [
            "idempotency-window",
            None,
            DEFAULT_IDEMPOTENCY_WINDOW,
            "seconds an add's Idempotency-Key is remembered: a repeated add with the key "
            "within them stores nothing and answers as the first did (422 with another "
            "payload); after them the key adds anew",
            _positive_int("idempotency-window"),
        ],
        [
            "data-dir",
            None,
            "./restmq-data",
            "directory of the embedded Valkey server (append-only file, unix socket)",
        ],
        [
            "fsync",
            None,
            None,
            "when the embedded Valkey syncs its append-only file to disk: 'always' before "
            "each write is answered (no acknowledged add is lost on power loss; each write "
            "waits for the disk), 'everysec' once a second (a power loss or OS crash may "
            "lose the last ~1 s), 'no' when the OS chooses (~30 s) "
            f"[default: {DEFAULT_FSYNC}]; not with an external store, which keeps its own",
            _fsync,
        ],
        ["port", "p", DEFAULT_PORT, "TCP port to listen on", _port("port")],
        ["listen", "l", "127.0.0.1", "interface (address) to listen on"],
        [
            "max-body",
            None,
            DEFAULT_MAX_BODY,
            "largest request body accepted, in bytes (larger ones get 413)",
            _positive_int("max-body"),
        ],
        [
            "max-header-bytes",
            None,
            DEFAULT_MAX_HEADER_BYTES,
            "largest request head (request line and headers) accepted, in bytes (larger "
            "ones get 431)",
            _positive_int("max-header-bytes"),
        ],
        [
            "max-headers",
            None,
            DEFAULT_MAX_HEADERS,
            "most header lines accepted in one request (more get 431)",
            _positive_int("max-headers"),
        ],
        [
            "max-consumers",
            None,
            DEFAULT_MAX_CONSUMERS,
            "most streaming consumers (COMET, SSE, WebSocket) served at once; more get 503",
            _positive_int("max-consumers"),
        ],
        [
            "consumer-buffer",
            None,
            4 * 1024 * 1024,
            "bytes a streaming consumer may fall behind (buffered in the broker) before it "
            "is disconnected",
            _positive_int("consumer-buffer"),
        ],
        [
            "max-buffered",
            None,
            DEFAULT_MAX_BUFFERED,
            "bytes of request bodies being received and streaming consumer buffers the "
            "broker holds at once, all together; past it, the consumers furthest behind are "
            'disconnected first, then new request bodies get 503 "broker busy" '
            "(at least --max-body)",
            _positive_int("max-buffered"),
        ],
        [
            "sse-heartbeat",
            None,
            15.0,
            "seconds between keep-alive comments on Server-Sent Events streams (so proxies "
            "do not close idle streams)",
            _positive_float("sse-heartbeat"),
        ],
        [
            "header-timeout",
            None,
            DEFAULT_HEADER_TIMEOUT,
            "seconds a client has to send its request headers, and again its request "
            "body; slower (or idle keep-alive) connections are dropped",
            _positive_float("header-timeout"),
        ],
        [
            "metrics-max-queues",
            None,
            DEFAULT_METRICS_MAX_QUEUES,
            "distinct queues GET /metrics labels by name; further queues are counted "
            'together under queue="_other"',
            _positive_int("metrics-max-queues"),
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM certificate file (the server's certificate first, then its chain) to serve "
            "HTTPS and wss:// on --port, with --tls-key [default: none, plain HTTP]",
        ],
        ["tls-key", None, None, "PEM private key file of --tls-cert"],
        [
            "workers",
            None,
            1,
            "broker processes serving --port together, to use more than one core: this "
            "one and N-1 workers it starts, watches and stops (they share its storage); "
            "'auto' = one per core",
            _workers,
        ],
        # Set by the main process on the workers it starts; hidden from --help.
        ["worker-fd", None, None, "", _non_negative_int("worker-fd")],
    ]

    #: Options that only the broker itself passes (see getUsage).
    hidden = ("worker-fd",)

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Kept so that the workers are started with the very arguments this broker got.
        self.arguments = list(sys.argv[1:] if options is None else options)
        self.directory = os.getcwd()  # relative paths in them are relative to it
        try:
            super().parseOptions(options)
        except usage.UsageError as exc:
            if self.parent is None:  # parsed by our own code, which reports it its way
                raise
            # Under twistd: the error first, then where the options are explained.
            # twistd itself would print the whole --help text, then the error below it.
            command = self.command_name()
            raise SystemExit(f"{command}: {exc}\nRun '{command} --help' for the options.") from None

    def command_name(self) -> str:
        """How the user ran us, as they typed it: ``twistd restmq`` (or ``twist restmq``)."""
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "twistd"
        subcommand = getattr(self.parent, "subCommand", None) or "restmq"
        return f"{program} {subcommand}"

    def getUsage(self, width: int | None = None) -> str:
        shown = [name for name in self.longOpt if name.rstrip("=") not in self.hidden]
        every, self.longOpt = self.longOpt, shown
        try:
            return super().getUsage(width)
        finally:
            self.longOpt = every

    def opt_version(self) -> None:
        """Print the RestMQ version and exit."""
        print(f"RestMQ {__version__}")
        raise SystemExit(0)

    @property
    def embedded(self) -> bool:
        """True when no external Redis was named on the command line."""
        return (
            self["redis-host"] is None
            and self["redis-port"] is None
            and self["redis-socket"] is None
            and self["redis-sentinel"] is None
            and self["redis-cluster"] is None
        )

    @property
    def is_worker(self) -> bool:
        """True in a worker process started by a broker run with --workers."""
        return self["worker-fd"] is not None

    def postOptions(self) -> None:
        self._check_cluster()
        self._check_sentinel()
        self._check_fsync()
        if self.is_worker:
            self["workers"] = 1  # a worker starts no workers of its own
        if self["redis-socket"] and (self["redis-host"] or self["redis-port"]):
            raise usage.UsageError(
                "give either --redis-socket or --redis-host/--redis-port, not both"
            )
        if not self.embedded and not (
            self["redis-socket"] or self["redis-sentinel"] or self["redis-cluster"]
        ):
            self["redis-host"] = self["redis-host"] or "127.0.0.1"
            self["redis-port"] = self["redis-port"] or DEFAULT_REDIS_PORT
        if self["max-body"] > self["max-buffered"]:
            raise usage.UsageError(
                f"--max-body ({self['max-body']}) cannot be larger than --max-buffered "
                f"({self['max-buffered']}): no such body could ever be received"
            )
        self["data-dir"] = os.path.abspath(self["data-dir"])
        self["acl-given"] = isinstance(self["acl"], GivenPath)
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together: give both or neither")
        try:
            self["trusted-proxies"] = parse_trusted_proxies(self["trusted-proxies"])
        except AclError as exc:
            raise usage.UsageError(f"--trusted-proxies: {exc}") from None

    def _check_cluster(self) -> None:
        if self["redis-cluster"] is None:
            return
        named = [
            f"--{name}"
            for name in ("redis-host", "redis-port", "redis-socket", "redis-sentinel")
            if self[name] is not None
        ]
        if named:
            raise usage.UsageError(
                f"give either --redis-cluster or {'/'.join(named)}, not both: the cluster's "
                "nodes tell where each queue is"
            )
        if self["redis-service"] is not None:
            raise usage.UsageError(
                "--redis-service goes with --redis-sentinel, not --redis-cluster"
            )
        if self["redis-db"]:
            raise usage.UsageError(
                "--redis-db cannot be used with --redis-cluster: a cluster has database 0 only"
            )
        try:
            self["redis-cluster"] = parse_seeds(self["redis-cluster"])
        except ValueError as exc:
            raise usage.UsageError(f"--redis-cluster: {exc}") from None

    def _check_sentinel(self) -> None:
        if self["redis-sentinel"] is None:
            if self["redis-service"] is not None:
                raise usage.UsageError("--redis-service goes with --redis-sentinel")
        else:
            if self["redis-host"] or self["redis-port"] or self["redis-socket"]:
                raise usage.UsageError(
                    "give either --redis-sentinel or --redis-host/--redis-port/--redis-socket, "
                    "not both: Sentinel names the master"
                )
            if not self["redis-service"]:
                raise usage.UsageError(
                    "--redis-sentinel needs --redis-service, the master name the sentinels watch"
                )
            try:
                self["redis-sentinel"] = parse_sentinels(self["redis-sentinel"])
            except ValueError as exc:
                raise usage.UsageError(f"--redis-sentinel: {exc}") from None
        if self["redis-wait-replicas"] and self.embedded:
            raise usage.UsageError(
                "--redis-wait-replicas needs an external Redis with replicas (--redis-host, "
                "--redis-sentinel or --redis-cluster): the embedded Valkey has none"
            )

    def _check_fsync(self) -> None:
        if self.embedded:
            self["fsync"] = self["fsync"] or DEFAULT_FSYNC
            return
        if self["fsync"] is not None and not self.is_worker:
            # Refused rather than applied with CONFIG SET: an external server's
            # durability is its operator's configuration, possibly shared with other
            # clients, lost at its restart, and per node on a cluster or behind Sentinel.
            named = next(
                f"--{name}"
                for name in ("redis-host", "redis-port", "redis-socket", "redis-sentinel",
                             "redis-cluster")
                if self[name] is not None
            )  # fmt: skip
            raise usage.UsageError(
                f"--fsync applies to the embedded Valkey only; the external store named by "
                f"{named} keeps its own appendfsync: set it in that server's configuration"
            )
        # A worker is handed the main process's embedded Valkey, which that process
        # configured; the worker runs no Valkey of its own.
        self["fsync"] = None
