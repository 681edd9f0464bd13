"""The rules of acl.conf's sections, and the decision they make about one request.

An address is decided in this order: a specific ``hosts_allow`` entry lets it
in; a specific ``hosts_deny`` entry refuses it; then ``hosts_allow = all``
lets it in and ``hosts_deny = all`` refuses it; an address on neither list is
let in unless ``hosts_allow`` is set and ``hosts_deny`` is not. Then, when the
section names a user, the request must carry that user's password.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from twisted.internet import defer

from restmq.access import passwd
from restmq.access.acl import CHALLENGE, SECTIONS, Refused
from restmq.access.addresses import Address, HostPattern
from restmq.access.password_checks import passwords


@dataclass(frozen=True)
class SectionRules:
    """The rules of one acl.conf section."""

    name: str
    allow: tuple[HostPattern, ...] = ()
    deny: tuple[HostPattern, ...] = ()
    username: str | None = None
    password: str | passwd.ScryptHash | None = None

    @property
    def has_rules(self) -> bool:
        return bool(self.allow or self.deny or self.username)

    def address_allowed(self, address: Address | None) -> bool:
        if not self.allow and not self.deny:
            return True
        if address is None:
            return False  # an unknown address cannot pass address rules
        if any(p.matches(address) for p in self.allow if not p.is_all):
            return True
        if any(p.matches(address) for p in self.deny if not p.is_all):
            return False
        if any(p.is_all for p in self.allow):
            return True
        if any(p.is_all for p in self.deny):
            return False
        return not (self.allow and not self.deny)

    def _user_ok(self, username: str) -> bool:
        assert self.username is not None
        return hmac.compare_digest(username.encode("utf-8"), self.username.encode("utf-8"))

    def credentials_ok_later(self, credentials: list[tuple[str, str]]) -> defer.Deferred:
        """A Deferred: does any of ``credentials`` match? Fired at once when no scrypt is due."""
        assert self.password is not None
        known = [
            (self._user_ok(user), passwords.known(self.password, pw)) for user, pw in credentials
        ]
        if any(user_ok and password_ok for user_ok, password_ok in known):
            return defer.succeed(True)
        unknown = [
            (user_ok, pw)
            for (user_ok, password_ok), (_, pw) in zip(known, credentials, strict=True)
            if password_ok is None
        ]
        if not unknown:
            return defer.succeed(False)
        # The password is checked even for a wrong user, so timing tells nothing.
        checks = [
            passwords.check_later(self.password, pw).addCallback(
                lambda password_ok, user_ok=user_ok: user_ok and password_ok
            )
            for user_ok, pw in unknown
        ]
        return defer.gatherResults(checks).addCallback(any)


@dataclass(frozen=True)
class AccessRules:
    """Every section of one acl.conf; a section that is absent is open."""

    sections: dict[str, SectionRules] = field(default_factory=dict)
    source: str = "(no file)"

    def section(self, name: str) -> SectionRules:
        if name not in SECTIONS:
            raise ValueError(f"unknown acl section {name!r}")
        return self.sections.get(name) or SectionRules(name)

    def _admit(
        self, name: str, address: Address | None, credentials: list[tuple[str, str]]
    ) -> SectionRules | None:
        """Raise Refused for a wrong address or missing credentials; the rules when a
        password remains to be checked, None when the request may pass."""
        rules = self.section(name)
        if not rules.address_allowed(address):
            shown = str(address) if address is not None else "an unknown address"
            raise Refused(403, f"access from {shown} is not allowed ({name})")
        if rules.username is None:
            return None
        if not credentials:
            raise Refused(401, f"authentication required ({name})", CHALLENGE)
        return rules

    def decide_later(
        self, name: str, address: Address | None, credentials: list[tuple[str, str]]
    ) -> defer.Deferred:
        """A Deferred that fails with Refused unless ``address`` with ``credentials`` may
        use section ``name``; scrypt work runs in a thread.

        The Deferred has fired already unless a scrypt verdict had to be computed.
        """
        try:
            rules = self._admit(name, address, credentials)
        except Refused:
            return defer.fail()
        if rules is None:
            return defer.succeed(None)

        def verdict(ok: bool) -> None:
            if not ok:
                raise Refused(401, f"wrong username or password ({name})", CHALLENGE)

        return rules.credentials_ok_later(credentials).addCallback(verdict)
