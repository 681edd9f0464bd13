"""``--workers N``: the main process accepts every connection on the one listening
socket and deals them round-robin over the processes that serve, itself included.

A worker's connections go to it as file descriptors (``SCM_RIGHTS``) over a UNIX
socket pair made for it (its ``Outbox``); the worker's ``Inbox`` takes each one into
its reactor as a connection of its own. The main process then closes its copy with a
plain ``close``, which leaves the TCP connection alone: the worker holds it now.

Nothing here blocks the reactor: the listening socket and both ends of each pair are
non-blocking, the main process accepts until the kernel has no more, and a descriptor
the pair cannot take yet (its buffer is full: the worker is slow or paused) waits in
the outbox and goes out when the pair can take it again.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from collections.abc import Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

log = Logger(namespace="restmq.workers")

# Connections the listening socket holds until the main process accepts: a client's
# whole pool, made while the workers are still starting, must wait there, not be
# dropped (the kernel caps this at net.core.somaxconn).
BACKLOG = 1024
# Connections accepted in one turn of the reactor at most, so that a flood of new
# connections cannot starve the ones already open; the reactor comes back for more.
ACCEPTS_PER_TURN = 500
_TAG = b"c"  # the byte each descriptor travels with (a message cannot be empty)


def family_of(interface: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def with_tls(factory, tls):
    """What listenSSL does: TLS is a protocol wrapper over each TCP connection."""
    return factory if tls is None else TLSMemoryBIOFactory(tls, False, factory)


def listening_socket(port: int, interface: str) -> socket.socket:
    """The one socket listening on ``port`` (0: a free one), non-blocking.

    Raises ``CannotListenError`` when the port is taken, as Twisted's own ports do.
    """
    listening = socket.socket(family_of(interface), socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        listening.bind((interface, port))
        listening.listen(BACKLOG)
    except OSError as exc:
        listening.close()
        raise CannotListenError(interface, port, exc) from None
    listening.setblocking(False)
    return listening


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A UNIX socket pair for one worker's connections: (the main's end, the worker's).

    ``SOCK_SEQPACKET`` keeps each descriptor a message of its own, so a worker that
    dies can leave no half-read one behind.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    os.set_inheritable(theirs.fileno(), True)
    return ours, theirs


def adopt(reactor, connection: socket.socket, family: socket.AddressFamily, factory) -> None:
    """This process serves ``connection`` from now on; ``connection`` is closed here
    (the reactor holds a duplicate of it)."""
    with connection:
        connection.setblocking(False)
        try:
            reactor.adoptStreamConnection(connection.fileno(), family, factory)
        except OSError:
            pass  # the client has gone already (no peer address): nothing to serve
        except Exception:
            # one connection's failure must not end the dealing or the inbox
            log.failure("could not serve a connection")


def _received(end: socket.socket) -> list[socket.socket] | None:
    """Every connection waiting on ``end`` of a pair now; None once the other end closed."""
    connections: list[socket.socket] = []
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(end, 16, 4)
        except (BlockingIOError, InterruptedError):
            return connections
        connections += [socket.socket(fileno=fd) for fd in fds]
        if not message and not fds:
            return connections or None


# -- in the main process -----------------------------------------------------------------


@implementer(IWriteDescriptor)
class Outbox:
    """The main process's end of one worker's pair: the connections dealt to it.

    ``serving``: the worker takes connections now (it said so, and has not died).
    """

    def __init__(self, reactor, name: str) -> None:
        self.reactor = reactor
        self.name = name
        self.end, self.workers_end = channel_pair()
        self.serving = False
        self.waiting: deque[socket.socket] = deque()  # until the pair can take them
        self.give_back: Callable[[socket.socket], None] = lambda connection: connection.close()

    def send(self, connection: socket.socket) -> None:
        self.waiting.append(connection)
        if len(self.waiting) == 1:
            self.doWrite()

    def doWrite(self) -> None:
        while self.waiting:
            connection = self.waiting[0]
            try:
                socket.send_fds(self.end, [_TAG], [connection.fileno()])
            except (BlockingIOError, InterruptedError):
                self.reactor.addWriter(self)  # called again once the pair has room
                return None
            except OSError:
                # not expected (this process holds both ends); someone else serves it
                log.failure("could not hand a connection to {name}", name=self.name)
                self.waiting.popleft()
                self.give_back(connection)
                continue
            self.waiting.popleft()
            connection.close()  # only this process's copy: the worker has its own
        self.reactor.removeWriter(self)
        return None

    def withdraw(self) -> list[socket.socket]:
        """The worker is gone: it takes no more, and what it had not taken yet
        (waiting here, or sent but not received) comes back to be dealt again."""
        self.serving = False
        self.reactor.removeWriter(self)
        back = list(self.waiting)
        self.waiting.clear()
        back += _received(self.workers_end) or []
        return back

    def close(self) -> None:
        self.reactor.removeWriter(self)
        for connection in self.waiting:
            connection.close()
        self.waiting.clear()
        self.end.close()
        self.workers_end.close()

    def fileno(self) -> int:
        return self.end.fileno()

    def connectionLost(self, reason) -> None:
        self.reactor.removeWriter(self)

    def logPrefix(self) -> str:
        return self.name


@implementer(IReadDescriptor)
class Dealer:
    """Accepts on ``listening`` and deals the connections in turn to this process and
    to every outbox whose worker serves; what stands in for the HTTP port."""

    def __init__(
        self,
        reactor,
        listening: socket.socket,
        factory,
        tls=None,
        outboxes: list[Outbox] = (),
    ) -> None:
        self.reactor = reactor
        self.listening = listening
        self.family = listening.family
        self.factory = with_tls(factory, tls)
        self.outboxes = list(outboxes)
        for outbox in self.outboxes:
            outbox.give_back = self.deal
        self._turn = 0  # whose turn is next: 0 is this process, n is outbox n-1
        self._address = listening.getsockname()
        self.accepting = False

    def start(self) -> None:
        """Accept from now on (connections made earlier waited in the backlog)."""
        self.factory.doStart()
        self.accepting = True
        self.reactor.addReader(self)

    def deal(self, connection: socket.socket) -> None:
        """Hand ``connection`` to the next process that serves, skipping those that do not."""
        takers = 1 + len(self.outboxes)
        for step in range(takers):
            turn = (self._turn + step) % takers
            if turn == 0 or self.outboxes[turn - 1].serving:
                self._turn = (turn + 1) % takers
                break
        else:
            turn = 0
        if turn == 0 or not self.accepting:
            adopt(self.reactor, connection, self.family, self.factory)
        else:
            self.outboxes[turn - 1].send(connection)

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                connection, _address = self.listening.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue  # the client gave up before its turn
                # out of descriptors, say: the rest wait in the backlog for the next turn
                log.warn("could not accept a connection: {error}", error=exc.strerror)
                return None
            self.deal(connection)
        return None

    def getHost(self) -> IPv4Address | IPv6Address:
        kind = IPv6Address if self.family == socket.AF_INET6 else IPv4Address
        return kind("TCP", *self._address[:2])

    def stopListening(self) -> None:
        """The port takes no more connections; those that could not reach a worker
        yet are served here. Closing again does nothing."""
        if not self.accepting:
            return None
        self.accepting = False
        self.reactor.removeReader(self)
        self.listening.close()
        for outbox in self.outboxes:
            waiting = list(outbox.waiting)
            outbox.waiting.clear()
            self.reactor.removeWriter(outbox)
            for connection in waiting:
                adopt(self.reactor, connection, self.family, self.factory)
        self.factory.doStop()
        return None

    def fileno(self) -> int:
        return self.listening.fileno()

    def connectionLost(self, reason) -> None:
        self.reactor.removeReader(self)

    def logPrefix(self) -> str:
        return "restmq-dealer"


# -- in a worker -------------------------------------------------------------------------


@implementer(IReadDescriptor)
class Inbox:
    """A worker's end of its pair: each connection the main process deals to it is
    served here. What stands in for the HTTP port in a worker."""

    def __init__(self, reactor, fd: int, interface: str, factory, tls=None) -> None:
        self.reactor = reactor
        self.end = socket.socket(fileno=fd)  # this worker's own from now on
        self.end.setblocking(False)
        self.family = family_of(interface)
        self.factory = with_tls(factory, tls)
        self.open = False

    def start(self) -> None:
        self.factory.doStart()
        self.open = True
        self.reactor.addReader(self)

    def doRead(self) -> None:
        connections = _received(self.end)
        for connection in connections or []:
            adopt(self.reactor, connection, self.family, self.factory)
        if connections is None:  # the main process is gone; this worker follows it
            self.reactor.removeReader(self)

    def stopListening(self) -> None:
        """Takes what was dealt to this worker until now (the main process stopped
        dealing first), then no more."""
        if not self.open:
            return None
        self.open = False
        self.doRead()
        self.reactor.removeReader(self)
        self.end.close()
        self.factory.doStop()
        return None

    def fileno(self) -> int:
        return self.end.fileno()

    def connectionLost(self, reason) -> None:
        self.reactor.removeReader(self)

    def logPrefix(self) -> str:
        return "restmq-inbox"
