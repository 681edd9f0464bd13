"""AccessControl: the check every guarded route makes, against the rules in force."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from restmq.access import clients
from restmq.access.addresses import Network
from restmq.access.rules import AccessRules
from restmq.access.watcher import RELOAD_INTERVAL, RulesFile


class AccessControl:
    """The rules of acl.conf (kept current by restmq.access.watcher), the proxies
    trusted to say who their client is, and the check of one request."""

    def __init__(
        self,
        path: str | None,
        *,
        required: bool = False,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self.file = RulesFile(path, required=required)
        self.trusted_proxies = tuple(trusted_proxies)

    @property
    def rules(self) -> AccessRules:
        return self.file.rules

    def load(self) -> None:
        """Read acl.conf at startup; AclError when it is broken, or missing but required."""
        self.file.load()

    def start_watching(self, clock: Any, interval: float = RELOAD_INTERVAL) -> None:
        """Reload acl.conf when it changes, looking every ``interval`` seconds."""
        self.file.start_watching(clock, interval)

    def stop_watching(self) -> defer.Deferred:
        return self.file.stop_watching()

    def check_later(self, request: Any, section: str) -> defer.Deferred:
        """A Deferred that fails with Refused unless ``section`` lets ``request`` through.

        403: the client address is refused; 401 (with a Basic challenge): the
        credentials are missing or wrong. In ``websocket:consumer`` the original's
        ``auth=user:password`` cookie counts as well as HTTP Basic. The Deferred has
        fired already unless a scrypt password must be checked (in a thread).
        """
        rules = self.rules
        if not rules.section(section).has_rules:
            # an open section: skip parsing addresses and headers on every request
            return defer.succeed(None)
        address = clients.client_address(
            clients.socket_peer(request), request.headers, self.trusted_proxies
        )
        return rules.decide_later(section, address, clients.credentials(request.headers, section))
