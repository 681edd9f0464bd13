"""Where the broker's Redis pool connects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint


class ServerAddress(Protocol):
    """Where the pool connects: a RedisAddress, or a Sentinel service (storage.sentinel)."""

    master_only: bool
    #: what an operator calls it: "Redis", "embedded Valkey" or "Sentinel"
    kind: str

    def describe(self) -> str: ...

    def endpoint(self, reactor, timeout: float) -> IStreamClientEndpoint: ...


@dataclass(frozen=True)
class RedisAddress:
    """Where the Redis server is: a unix socket path, or a host and port."""

    host: str | None = None
    port: int | None = None
    socket: str | None = None
    #: "embedded Valkey" for the broker's own server; the same address either way
    kind: str = field(default="Redis", compare=False)

    #: whether the pool admits only a server that says it is the master (Sentinel)
    master_only = False

    def describe(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"

    def endpoint(self, reactor, timeout: float):
        if self.socket:
            return UNIXClientEndpoint(reactor, self.socket, timeout=timeout)
        return HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
