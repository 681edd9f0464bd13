"""Fixtures: real brokers and real Valkey servers, always stopped afterwards; and the
``needs`` marker for tests that run programs outside Python."""

from __future__ import annotations

import itertools
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from restmq.engine import keys
from restmq.engine.queues import QueueEngine
from restmq.runtime.local_cluster import LocalCluster
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from restmq.storage.cluster_client import ClusterClient, parse_seeds
from tests.support import (
    Broker,
    Valkey,
    free_cluster_base,
    in_ci,
    install_hint,
    missing_programs,
)


@pytest.fixture
def broker_factory(tmp_path_factory):
    """Start brokers (`twistd restmq` processes); all are stopped after the test."""
    started: list[Broker] = []

    def start(*args: str, workdir=None, wait: bool = True, env=None, port: int = 0) -> Broker:
        workdir = workdir or tmp_path_factory.mktemp("broker")
        broker = Broker(workdir, list(args), port=port, env=env)
        started.append(broker)
        return broker.start(wait=wait)

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def valkey_factory(tmp_path_factory):
    """Start standalone Valkey servers on loopback; all are stopped after the test."""
    started: list[Valkey] = []

    def start(**kwargs) -> Valkey:
        server = Valkey(tmp_path_factory.mktemp("valkey"), **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(valkey_factory):
    """A standalone Valkey for a test that runs the broker's parts in this process."""
    return valkey_factory()


@pytest.fixture
def connect_client():
    """Connect RedisClients in this process (the reactor runs under pytest-twisted), as a
    broker does; every one is disconnected after the test."""
    clients: list[RedisClient] = []

    def connect(server, **kwargs) -> RedisClient:
        kwargs.setdefault("poolsize", 2)
        client = RedisClient(reactor, RedisAddress(host="127.0.0.1", port=server.port), **kwargs)
        client.connect()
        pytest_twisted.blockon(defer.ensureDeferred(client.wait_until_ready()))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        pytest_twisted.blockon(client.disconnect())


@pytest.fixture
def engine(server, connect_client):
    """A QueueEngine over a real Valkey (``server``), in this process."""
    return QueueEngine(connect_client(server))


@pytest.fixture
def log_lines():
    """What the code under test logs (twisted.logger), as text, for the test's duration."""
    lines: list[str] = []

    def observe(event) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory):
    """One Valkey Cluster (3 primaries, 1 replica each) for the tests that leave it as
    they found it; started at the first test that asks for it, stopped after the last.
    No test fails a node of it, so a node is failed only after 2 s of silence: a machine
    busy for a second does not set off a failover under the other tests."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("cluster"), base_port=free_cluster_base(6), node_timeout_ms=2000
    )
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_factory(tmp_path_factory):
    """Start Valkey Clusters of a test's own (to kill nodes of, or move slots in); all are
    stopped after the test."""
    started: list[LocalCluster] = []

    def start(primaries: int = 3, replicas: int = 1, **kwargs) -> LocalCluster:
        base = free_cluster_base(primaries * (1 + replicas))
        cluster = LocalCluster(
            tmp_path_factory.mktemp("cluster"),
            base_port=base,
            primaries=primaries,
            replicas=replicas,
            **kwargs,
        )
        started.append(cluster)
        return cluster.start()

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def cluster_engine_factory():
    """QueueEngines in the cluster layout over a ClusterClient each (each one a broker of
    its own), as a broker connects them; all are disconnected after the test."""
    clients: list[ClusterClient] = []

    async def connect(cluster, **kwargs) -> QueueEngine:
        kwargs.setdefault("poolsize", 2)
        client = ClusterClient(reactor, parse_seeds(",".join(cluster.seeds)), **kwargs)
        clients.append(client)
        client.connect()
        await client.wait_until_ready()
        return QueueEngine(client, keys.CLUSTER)

    yield connect
    for client in clients:
        pytest_twisted.blockon(client.disconnect())


@pytest.fixture
def cluster_engine(valkey_cluster, cluster_engine_factory):
    """A QueueEngine in the cluster layout on the session cluster (``valkey_cluster``); the
    cluster is shared, so a test names its queues uniquely (the ``queue`` fixture)."""
    return pytest_twisted.blockon(defer.ensureDeferred(cluster_engine_factory(valkey_cluster)))


@pytest.fixture(scope="session")
def storage(request) -> str:
    """The store ``shared_broker`` runs on: ``embedded`` unless a module runs its tests on
    each (``pytestmark = STORAGE_MODES``, from tests.support)."""
    return getattr(request, "param", "embedded")


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory, storage, request):
    """One broker for the tests that only need a broker: on the embedded Valkey, or on
    the session's Valkey Cluster when ``storage`` is ``cluster``."""
    args: list[str] = []
    if storage == "cluster":
        cluster = request.getfixturevalue("valkey_cluster")
        args = [f"--redis-cluster={','.join(cluster.seeds)}"]
    broker = Broker(tmp_path_factory.mktemp(f"shared-broker-{storage}"), args)
    broker.start()
    yield broker
    broker.stop()


_names = itertools.count()


def pytest_generate_tests(metafunc) -> None:
    """A test that uses ``storage`` without STORAGE_MODES runs on the embedded Valkey, as the
    ``embedded`` parameter itself: so it shares its module's embedded broker with the tests
    that run on both stores, rather than start a third one."""
    if "storage" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "storage" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return
    metafunc.parametrize("storage", ["embedded"], indirect=True, scope="session")


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(*programs): the test runs these programs; without them on PATH it is skipped"
        " with what to install (under CI=true it fails instead)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Before any fixture starts: skip (or, under CI, fail) a test whose programs are missing."""
    missing = missing_programs(name for mark in item.iter_markers("needs") for name in mark.args)
    if not missing:
        return
    if in_ci():
        pytest.fail(f"CI=true: {install_hint(missing)}", pytrace=False)
    pytest.skip(install_hint(missing))


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses."""
    return f"t{next(_names)}-{uuid.uuid4().hex[:8]}"
