"""The parts of txredisapi that are not its public API, but that
restmq/storage/client.py and connection.py rely on: if an upgrade changes one of them, this test
fails and names it (pyproject.toml pins the range of versions tested).

- ``RedisFactory.pool``: the list of pool connections (we pick the least busy);
- ``RedisFactory.size``: how many are connected (``connected``, ``pool_size_now``);
- ``RedisFactory.addConnection`` / ``delConnection`` / ``connectionError``: the hooks
  that tell us Redis came, went, or refused our AUTH;
- ``RedisProtocol.replyQueue.waiting``: the replies a connection still waits for
  (a stalled connection is skipped);
- ``RedisProtocol.replyQueue.get`` and ``handle_reply``: how a sent command gets its reply.
"""

from __future__ import annotations

import pytest_twisted
import txredisapi
from twisted.internet import reactor

from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient


def relied_on(obj, name: str, where: str):
    """``obj.name``, or a failure naming the txredisapi internal that is gone."""
    if not hasattr(obj, name):
        raise AssertionError(
            f"txredisapi {txredisapi.__version__} has no {where}.{name}, which "
            "restmq/storage/ relies on: adapt the client before allowing this version"
        )
    return getattr(obj, name)


def test_the_factory_hooks_we_override_exist():
    for hook in ("addConnection", "delConnection", "connectionError"):
        assert callable(relied_on(txredisapi.RedisFactory, hook, "RedisFactory"))
    assert callable(relied_on(txredisapi.RedisProtocol, "handle_reply", "RedisProtocol"))
    assert callable(relied_on(txredisapi.RedisProtocol, "replyReceived", "RedisProtocol"))


@pytest_twisted.ensureDeferred
async def test_pool_size_and_reply_queue_behave_as_the_client_expects(valkey_factory):
    server = valkey_factory()
    client = RedisClient(reactor, RedisAddress(host="127.0.0.1", port=server.port), poolsize=2)
    client.connect()
    try:
        await client.wait_until_ready()
        factory = client._factory  # the client's txredisapi RedisFactory
        pool = relied_on(factory, "pool", "RedisFactory")
        assert isinstance(pool, list), "txredisapi RedisFactory.pool is no longer a list"
        size = relied_on(factory, "size", "RedisFactory")
        assert size == len([c for c in pool if c.connected]) >= 1, (
            "txredisapi RedisFactory.size no longer counts the connected pool connections"
        )
        connection = pool[0]
        queue = relied_on(connection, "replyQueue", "RedisProtocol")
        waiting = relied_on(queue, "waiting", "RedisProtocol.replyQueue")
        assert len(waiting) == 0
        reply = connection.send(["PING"])
        assert len(queue.waiting) == 1, (
            "txredisapi RedisProtocol.replyQueue.waiting no longer holds the pending replies"
        )
        assert await reply == "PONG"
        assert len(queue.waiting) == 0
    finally:
        await client.disconnect()
    assert relied_on(factory, "size", "RedisFactory") == 0


def test_the_pinned_range_is_the_installed_version():
    # pyproject.toml allows 1.6.x only: the version these tests ran against.
    assert txredisapi.__version__.startswith("1.6."), txredisapi.__version__
