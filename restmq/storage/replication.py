"""Durable writes: answer a write only once enough replicas have it (Redis ``WAIT``).

Redis replicates asynchronously: a master that fails right after answering can
take the last writes with it. With ``--redis-wait-replicas N`` the broker sends
``WAIT N timeout`` behind such a write, on the same connection and without
waiting for the write's own reply (no extra round trip), and answers once WAIT
says N replicas have every write that connection made.

A WAIT blocks its connection until the replicas answer, so one WAIT per write
would cost a replica round trip per write on each connection. The writes sent
on a connection in one reactor turn therefore share one WAIT, sent right after
them (``callLater(0)``): one replica round trip confirms the whole batch.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.python import failure

from restmq.errors import OutcomeUnknown


class ReplicaFence:
    """Holds back the replies of writes until ``replicas`` replicas confirm them."""

    def __init__(self, reactor, replicas: int, timeout: float) -> None:
        self.reactor = reactor
        self.replicas = replicas
        self.timeout = timeout
        self._pending: dict[Any, list[defer.Deferred]] = {}  # connection -> waiting writes

    def after(self, connection, reply: defer.Deferred) -> defer.Deferred:
        """``reply`` (of a write just sent on ``connection``), once replicated.

        Fails with OutcomeUnknown when fewer replicas confirm within ``timeout``: the
        write is on the master, which may lose it if it fails.
        """
        confirmed: defer.Deferred = defer.Deferred()
        waiting = self._pending.get(connection)
        if waiting is None:
            waiting = self._pending[connection] = []
            self.reactor.callLater(0, self._wait, connection)
        waiting.append(confirmed)

        # Replies come in order: the write's own, then its WAIT's.
        def written(outcome):
            if isinstance(outcome, failure.Failure):
                confirmed.addErrback(lambda _: None)  # the write's failure is the answer
                return outcome
            return confirmed.addCallback(self._judge, outcome)

        return reply.addBoth(written)

    def _wait(self, connection) -> None:
        waiting = self._pending.pop(connection)
        if not connection.connected:
            # as txredisapi fails the replies of a lost connection, and the client maps it
            lost = failure.Failure(txredisapi.ConnectionError("Lost connection"))
            for confirmed in waiting:
                confirmed.errback(lost)
            return
        wait_ms = max(1, round(self.timeout * 1000))  # WAIT 0 would wait forever
        sent = connection.send(("WAIT", self.replicas, wait_ms))

        def tell(outcome):
            for confirmed in waiting:
                if isinstance(outcome, failure.Failure):
                    confirmed.errback(outcome)
                else:
                    confirmed.callback(outcome)

        sent.addBoth(tell)

    def _judge(self, replicas: Any, reply: Any) -> Any:
        if int(replicas) < self.replicas:
            raise OutcomeUnknown(
                f"stored state unknown: not replicated: {int(replicas)} of {self.replicas} "
                f"replica(s) confirmed the write within {self.timeout:g} s; it is on the "
                "master, which may lose it if it fails: check before retrying"
            )
        return reply


__all__ = ["ReplicaFence"]
