"""The txredisapi pieces the broker's pool is built of: commands encoded once in RESP,
a protocol that sends them as they are, and a pool factory that reports when the
pool comes up or goes down and, behind Sentinel, admits only the master's connections."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet import defer

STALL_AFTER = 0.05  # seconds without a reply after which a busy connection is passed over
ROLE_TIMEOUT = 2.0  # seconds a new connection has to say whether its server is the master
monotonic_now = time.monotonic  # the clock of stall checks


def encode_command(args: Sequence[Any]) -> bytes:
    """One Redis command in RESP: text as UTF-8, bytes (or a memoryview of bytes) as
    they are, whole numbers in decimal. A large argument is copied once, into the
    command: its header and trailer are parts of their own, not a formatted copy."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _argument_bytes(arg)
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        parts += (b"$%d\r\n" % size, data, b"\r\n")
    return b"".join(parts)


def command_size(args: Sequence[Any]) -> int:
    """The length of ``encode_command(args)``, without building it (text that is not
    ASCII is encoded to be measured, and let go at once)."""
    size = len(b"*%d\r\n" % len(args))
    for arg in args:
        if isinstance(arg, str):
            n = len(arg) if arg.isascii() else len(arg.encode("utf-8"))
        elif isinstance(arg, memoryview):
            n = arg.nbytes
        elif isinstance(arg, bytes):
            n = len(arg)
        else:
            n = len(_argument_bytes(arg))
        size += len(b"$%d\r\n" % n) + n + 2
    return size


def _argument_bytes(arg: Any) -> bytes | memoryview:
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bytes | memoryview):
        return arg
    if isinstance(arg, int) and not isinstance(arg, bool):
        return b"%d" % arg
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


class BrokerProtocol(txredisapi.RedisProtocol):
    """txredisapi's protocol (hiredis parser) with a lean way to send a command."""

    #: when this connection last got a reply, or began waiting for one
    last_progress = 0.0

    def tryConvertData(self, data):
        """A reply as text where it is UTF-8, as txredisapi's own conversion gives it
        with ``convertNumbers`` off; that one runs several checks per element, which
        costs a batch pop (a reply of four elements per message) more than its parse."""
        if self.convertNumbers or self.charset != "utf-8":
            return super().tryConvertData(data)
        kind = data.__class__
        if kind is bytes:
            try:
                return data.decode()
            except UnicodeDecodeError:
                return data
        if kind is not list:
            return data
        try:
            return [
                x.decode()
                if x.__class__ is bytes
                else (self.tryConvertData(x) if x.__class__ is list else x)
                for x in data
            ]
        except UnicodeDecodeError:  # some element is not text: convert each on its own
            return [self.tryConvertData(x) for x in data]

    def replyReceived(self, reply):
        self.last_progress = monotonic_now()
        super().replyReceived(reply)
        if (
            isinstance(reply, txredisapi.ResponseError)
            and self.factory.master_only
            and str(reply).startswith("READONLY")
        ):
            # The master was demoted under us: leave it on every connection to it, and
            # reconnect, which asks Sentinel anew.
            peer = self.transport.getPeer()
            for conn in [self, *self.factory.pool]:
                if conn is self or conn.transport.getPeer() == peer:
                    conn.transport.loseConnection()

    def stalled(self, now: float) -> bool:
        """Replies are due but none came lately: Redis is stuck on this connection."""
        return bool(self.replyQueue.waiting) and now - self.last_progress > STALL_AFTER

    def send(self, args: Sequence[Any]) -> defer.Deferred:
        """Write one command; its reply (a ResponseError becomes a failure).

        txredisapi's execute_command adds a Deferred, closures and kwargs handling
        per call that we never use. Cancelling the returned Deferred is safe: the
        reply queue keeps a placeholder, so later replies stay in line.
        """
        return self.send_encoded(encode_command(args))

    def send_encoded(self, data: bytes) -> defer.Deferred:
        """Write one command already in RESP; its reply, as ``send``."""
        if not self.replyQueue.waiting:
            self.last_progress = monotonic_now()
        self.transport.write(data)
        return self.replyQueue.get().addCallback(self.handle_reply)


class ObservedFactory(txredisapi.RedisFactory):
    """A pool factory that reports when the first connection comes or the last goes."""

    protocol = BrokerProtocol

    # Reconnect fast: the library's default backoff grows to 10 s per slot.
    initialDelay = 0.1
    maxDelay = 1.0

    on_state_change: Callable[[bool], None] = staticmethod(lambda up: None)
    on_refusal: Callable[[str], None] = staticmethod(lambda why: None)
    master_only = False  # admit a connection only once its server says it is the master

    def connectionError(self, why):
        # AUTH or SELECT failed: txredisapi stops retrying that connection for good.
        super().connectionError(why)
        self.on_refusal(str(why))

    def addConnection(self, conn):
        if not self.master_only or not conn.connected:
            return self._admit(conn)  # (which drops a connection that died meanwhile)
        # A sentinel's answer may be stale (a failover under way): ask the server itself.
        from twisted.internet import reactor  # as txredisapi's own timers do

        role = conn.send(("ROLE",)).addTimeout(ROLE_TIMEOUT, reactor)
        role.addBoth(self._admit_if_master, conn)

    def _admit_if_master(self, role, conn) -> None:
        if isinstance(role, list) and role and role[0] == "master":
            self._admit(conn)
        elif conn.transport is not None:
            conn.transport.loseConnection()

    def _admit(self, conn) -> None:
        before = self.size
        super().addConnection(conn)
        if before == 0 and self.size > 0:
            self.on_state_change(True)

    def delConnection(self, conn):
        before = self.size
        super().delConnection(conn)
        if before > 0 and self.size == 0:
            self.on_state_change(False)
