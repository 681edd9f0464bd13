"""Access control from ``acl.conf``: who may produce and consume, from where, with which password.

The file is INI. Each section guards a family of routes (``rest:producer``,
``rest:consumer``, ``comet:consumer``, ``websocket:consumer``) with up to four
keys: ``hosts_allow``, ``hosts_deny`` (space-separated addresses, prefixes such
as ``192.168.0.``, CIDR networks, IPv6, or ``all``), ``username`` and
``password`` (plain, or a ``scrypt$...`` hash from ``restmq-passwd``).

An address is decided in this order: a specific ``hosts_allow`` entry lets it
in; a specific ``hosts_deny`` entry refuses it; then ``hosts_allow = all``
lets it in and ``hosts_deny = all`` refuses it; an address on neither list is
let in unless ``hosts_allow`` is set and ``hosts_deny`` is not. Then, when the
section names a user, the request must carry that user's password.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import hashlib
import hmac
import ipaddress
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from restmq.access import passwd
from restmq.errors import RestMQError

log = Logger(namespace="restmq.acl")

#: The acl.conf sections; every front end names them through these constants.
PRODUCER = "rest:producer"  # adding, purging, deleting, settings (POST/DELETE)
CONSUMER = "rest:consumer"  # popping, peeking, reading settings and figures (GET)
COMET = "comet:consumer"  # /c/<queue> streams (COMET and Server-Sent Events)
WEBSOCKET = "websocket:consumer"  # /ws/<queue>
SECTIONS = (PRODUCER, CONSUMER, COMET, WEBSOCKET)
KEYS = ("hosts_allow", "hosts_deny", "username", "password")
#: sections whose clients may also log in with the original ``auth=user:password`` cookie
COOKIE_SECTIONS = frozenset({WEBSOCKET})
REALM = "RestMQ Restricted Access"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
RELOAD_INTERVAL = 5.0  # seconds between looks at the file

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_PREFIX = re.compile(r"\d{1,3}(\.\d{1,3}){0,2}\.|\d{1,3}(\.\d{1,3}){1,2}")
_IPV6_PREFIX = re.compile(r"([0-9a-fA-F]{1,4}:){1,7}")
_HOST_PORT = re.compile(r"\[(?P<v6>[^\]]+)\](:\d+)?|(?P<v4>[\d.]+):\d+")


class AclError(Exception):
    """acl.conf cannot be used; the message says where and why."""


class Refused(RestMQError):
    """A request acl.conf does not let through: 403 (address) or 401 (credentials)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# -- addresses ---------------------------------------------------------------


def parse_address(text: str | None) -> Address | None:
    """An IP address from a socket peer or a forwarding header; None if it is not one."""
    if not text:
        return None
    text = text.strip()
    hostport = _HOST_PORT.fullmatch(text)
    if hostport:
        text = hostport.group("v6") or hostport.group("v4")
    text = text.split("%", 1)[0]  # an IPv6 zone (fe80::1%eth0) does not change who it is
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3 on a dual-stack socket
    return address


def parse_network(text: str) -> Network:
    """A network from acl.conf or --trusted-proxies: address, prefix or CIDR."""
    entry = text.strip()
    if "/" in entry:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise AclError(f"{entry!r} is not a CIDR network such as 10.0.0.0/8") from None
        if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
            raise AclError(f"{entry!r}: write IPv4 networks in IPv4 form")
        return network
    address = parse_address(entry)
    if address is not None and "[" not in entry:
        return ipaddress.ip_network(address)
    if _IPV4_PREFIX.fullmatch(entry):
        # The original's string prefixes ("192.168.0."), matched by whole numbers.
        octets = [int(part) for part in entry.rstrip(".").split(".")]
        if any(octet > 255 for octet in octets):
            raise AclError(f"{entry!r} is not an IPv4 address prefix")
        padded = octets + [0] * (4 - len(octets))
        return ipaddress.ip_network("{}.{}.{}.{}/{}".format(*padded, 8 * len(octets)), strict=False)
    if _IPV6_PREFIX.fullmatch(entry):
        groups = entry.rstrip(":").split(":")
        return ipaddress.ip_network(f"{':'.join(groups)}::/{16 * len(groups)}", strict=False)
    raise AclError(
        f"{entry!r} is not an IP address, an address prefix (192.168.0.), a CIDR network "
        "(10.0.0.0/8) or 'all'; host names are not supported"
    )


@dataclass(frozen=True)
class HostPattern:
    """One entry of hosts_allow / hosts_deny; ``network`` None stands for ``all``."""

    text: str
    network: Network | None

    @property
    def is_all(self) -> bool:
        return self.network is None

    def matches(self, address: Address) -> bool:
        if self.network is None:
            return True
        return address.version == self.network.version and address in self.network


def parse_hosts(value: str) -> tuple[HostPattern, ...]:
    patterns = []
    for entry in value.split():
        if entry.lower() == "all":
            patterns.append(HostPattern(entry, None))
        else:
            patterns.append(HostPattern(entry, parse_network(entry)))
    return tuple(patterns)


# -- passwords ---------------------------------------------------------------


class PasswordChecker:
    """Checks passwords against plain or scrypt ones; remembers recent scrypt verdicts.

    A scrypt check costs tens of milliseconds of CPU, too much for every request of
    a busy client and far too much for the reactor thread: ``check_later`` runs it in
    a worker thread, at most ``concurrency`` at a time, so a flood of wrong passwords
    waits its turn instead of stalling every connection or taking every thread.
    A verdict is remembered under an HMAC of the candidate with a per-process
    secret, so the plain candidate is never kept; a remembered verdict and a plain
    password are decided at once.
    """

    def __init__(self, size: int = 512, concurrency: int = 2) -> None:
        self._secret = os.urandom(32)
        self._verdicts: OrderedDict[tuple[str, bytes], bool] = OrderedDict()
        self._size = size
        self._slots = defer.DeferredSemaphore(concurrency)

    def _key(self, expected: passwd.ScryptHash, given: bytes) -> tuple[str, bytes]:
        return (str(expected), hmac.new(self._secret, given, hashlib.sha256).digest())

    def _remember(self, key: tuple[str, bytes], verdict: bool) -> None:
        self._verdicts[key] = verdict
        if len(self._verdicts) > self._size:
            self._verdicts.popitem(last=False)

    def known(self, expected: str | passwd.ScryptHash, candidate: str) -> bool | None:
        """The verdict if it needs no scrypt work (plain or remembered); None otherwise."""
        given = candidate.encode("utf-8")
        if isinstance(expected, str):
            return hmac.compare_digest(given, expected.encode("utf-8"))
        key = self._key(expected, given)
        verdict = self._verdicts.get(key)
        if verdict is not None:
            self._verdicts.move_to_end(key)
        return verdict

    def check_later(self, expected: str | passwd.ScryptHash, candidate: str) -> defer.Deferred:
        """A Deferred verdict; fired already when it needs no scrypt work."""
        verdict = self.known(expected, candidate)
        if verdict is not None:
            return defer.succeed(verdict)
        assert isinstance(expected, passwd.ScryptHash)
        given = candidate.encode("utf-8")
        key = self._key(expected, given)

        def done(result: bool) -> bool:
            self._remember(key, result)
            return result

        def failed(failure: Any) -> bool:
            log.failure("access control: a scrypt password check failed", failure)
            return False  # not remembered: the next attempt checks again

        checking = self._slots.run(threads.deferToThread, expected.matches, given)
        return checking.addCallbacks(done, failed)


_passwords = PasswordChecker()


# -- rules -------------------------------------------------------------------


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
            (self._user_ok(user), _passwords.known(self.password, pw)) for user, pw in credentials
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
            _passwords.check_later(self.password, pw).addCallback(
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


def parse_rules(text: str, source: str) -> AccessRules:
    """Read acl.conf text; AclError says which line or key is wrong."""
    # No interpolation: passwords may hold "%". No DEFAULT section: every section says it all.
    parser = configparser.ConfigParser(
        interpolation=None, default_section="\0no-default", strict=True
    )
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise AclError(" ".join(str(exc).split())) from None
    sections: dict[str, SectionRules] = {}
    for raw_name in parser.sections():
        name = raw_name.strip().lower()
        if name not in SECTIONS:
            raise AclError(
                f"{source}: unknown section [{raw_name}]; the sections are "
                + ", ".join(f"[{s}]" for s in SECTIONS)
            )
        if name in sections:
            raise AclError(f"{source}: section [{raw_name}] appears twice")
        sections[name] = _parse_section(parser[raw_name], name, source)
    return AccessRules(sections, source)


def _parse_section(values: Any, name: str, source: str) -> SectionRules:
    where = f"{source} [{name}]"
    for key in values:
        if key not in KEYS:
            raise AclError(f"{where}: unknown key {key!r}; the keys are " + ", ".join(KEYS))
    try:
        allow = parse_hosts(values.get("hosts_allow", ""))
        deny = parse_hosts(values.get("hosts_deny", ""))
    except AclError as exc:
        raise AclError(f"{where}: {exc}") from None
    username = values.get("username", "").strip() or None
    password_text = values.get("password", "").strip() or None
    if (username is None) != (password_text is None):
        raise AclError(f"{where}: username and password go together; set both or neither")
    if username is not None and ":" in username:
        raise AclError(f"{where}: a username cannot contain ':' (HTTP Basic splits on it)")
    password: str | passwd.ScryptHash | None = password_text
    if password_text is not None and passwd.is_hash(password_text):
        try:
            password = passwd.parse_hash(password_text)
        except passwd.BadHash as exc:
            raise AclError(f"{where}: password: {exc}") from None
    return SectionRules(name, allow, deny, username, password)


# -- requests ----------------------------------------------------------------


def _header_values(headers: Any, name: str) -> list[str]:
    get_list = getattr(headers, "get_list", None)
    if get_list is not None:
        return list(get_list(name))
    value = headers.get(name)
    return [value] if value else []


def basic_credentials(headers: Any) -> tuple[str, str] | None:
    """User and password of an ``Authorization: Basic`` header, if there is a readable one."""
    for value in _header_values(headers, "Authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic":
            continue
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            continue
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            text = decoded.decode("latin-1")
        user, colon, password = text.partition(":")
        if colon:
            return user, password
    return None


def cookie_credentials(headers: Any) -> tuple[str, str] | None:
    """The original's ``auth=user:password`` cookie (read by hand: SimpleCookie drops cookies)."""
    for value in _header_values(headers, "Cookie"):
        for item in value.split(";"):
            name, equals, cookie = item.strip().partition("=")
            if not equals or name.strip() != "auth":
                continue
            cookie = cookie.strip()
            if len(cookie) >= 2 and cookie[0] == cookie[-1] == '"':
                cookie = cookie[1:-1]
            user, colon, password = cookie.partition(":")
            if colon:
                return user, password
    return None


def socket_peer(request: Any) -> str | None:
    """The address at the other end of the connection, whatever the headers say."""
    transport = getattr(getattr(request, "connection", None), "transport", None)
    if transport is not None:
        host = getattr(transport.getPeer(), "host", None)
        if host:
            return host
    return getattr(request, "remote_ip", None)


#: what a file's stat says about its content: inode, size, modification and change times
FileSignature = tuple[int, int, int, int]


def file_signature(path: str) -> FileSignature:
    """Changes whenever the file is written, replaced, or its permissions change."""
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class AccessControl:
    """The rules in force, the file they come from, and the check every guarded route makes."""

    def __init__(
        self,
        path: str | None,
        *,
        required: bool = False,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self.path = os.path.abspath(path) if path else None
        self.required = required
        self.trusted_proxies = tuple(trusted_proxies)
        self.rules = AccessRules()
        self._digest: bytes | None = None  # of the content last read, good or bad
        self._seen: FileSignature | None = None  # the file's stat when it was last read
        self._gone_logged = False
        self._loop: task.LoopingCall | None = None

    # -- loading ------------------------------------------------------------

    def load(self) -> None:
        """Read the file at startup; AclError when it is broken or missing but required."""
        if self.path is None:
            log.info("access control: no acl file; every route is open")
            return
        try:
            signature = file_signature(self.path)
            data = self._read()
        except FileNotFoundError:
            if self.required:
                raise AclError(f"acl file {self.path} does not exist") from None
            log.info("access control: no {path}; every route is open", path=self.path)
            return
        except OSError as exc:
            raise AclError(f"cannot read acl file {self.path}: {exc.strerror}") from None
        self._seen = signature
        self._install(data)

    def _read(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read(1024 * 1024)

    def _install(self, data: bytes) -> None:
        self._digest = hashlib.sha256(data).digest()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AclError(f"acl file {self.path} is not UTF-8 text") from None
        self.rules = parse_rules(text, self.path)
        guarded = [name for name, rules in self.rules.sections.items() if rules.has_rules]
        if guarded:
            log.info(
                "access control: {path} guards {sections}",
                path=self.path,
                sections=", ".join(guarded),
            )
        else:
            log.info("access control: {path} has no rules; every route is open", path=self.path)

    def reload_if_changed(self) -> None:
        """Re-read the file if its content changed; a broken file keeps the rules in force.

        A file whose stat is as it was when last read is neither read nor hashed.
        """
        if self.path is None:
            return
        try:
            # Taken before reading: a write that lands meanwhile changes it again.
            signature = file_signature(self.path)
            if signature == self._seen:
                return
            data = self._read()
        except OSError as exc:
            if not self._gone_logged and self._digest is not None:
                log.error(
                    "access control: cannot read {path} ({error}); keeping the previous rules",
                    path=self.path,
                    error=exc.strerror,
                )
            self._gone_logged = True
            return
        self._gone_logged = False
        self._seen = signature
        if hashlib.sha256(data).digest() == self._digest:
            return
        previous = self.rules
        try:
            self._install(data)
        except AclError as exc:
            self.rules = previous
            log.error(
                "access control: {path} was changed but cannot be used, keeping the previous "
                "rules: {error}",
                path=self.path,
                error=str(exc),
            )
            return
        log.info("access control: reloaded {path}", path=self.path)

    def start_watching(self, clock: Any, interval: float = RELOAD_INTERVAL) -> None:
        if self.path is None or self._loop is not None:
            return
        self._loop = task.LoopingCall(self.reload_if_changed)
        self._loop.clock = clock
        self._loop.start(interval, now=False).addErrback(
            lambda failure: log.failure("access control: reload loop failed", failure)
        )

    def stop_watching(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- checking -----------------------------------------------------------

    def _trusted(self, address: Address) -> bool:
        return any(
            address.version == network.version and address in network
            for network in self.trusted_proxies
        )

    def client_address(self, peer: str | None, headers: Any) -> Address | None:
        """The client's address: the socket peer, or what a trusted proxy says it forwarded."""
        address = parse_address(peer)
        if address is None or not self._trusted(address):
            return address
        hops = [
            hop.strip()
            for value in _header_values(headers, "X-Forwarded-For")
            for hop in value.split(",")
            if hop.strip()
        ]
        if hops:
            # Each proxy appends the peer it saw: the right-most hop that is not one of
            # our proxies is the client; anything left of it may be made up.
            for hop in reversed(hops):
                hop_address = parse_address(hop)
                if hop_address is None or not self._trusted(hop_address):
                    return hop_address
            return parse_address(hops[0])
        real_ip = _header_values(headers, "X-Real-IP")
        if real_ip:
            return parse_address(real_ip[-1])
        return address

    def _credentials(self, request: Any, section: str) -> list[tuple[str, str]]:
        credentials = []
        basic = basic_credentials(request.headers)
        if basic is not None:
            credentials.append(basic)
        if section in COOKIE_SECTIONS:
            cookie = cookie_credentials(request.headers)
            if cookie is not None:
                credentials.append(cookie)
        return credentials

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
        address = self.client_address(socket_peer(request), request.headers)
        return rules.decide_later(section, address, self._credentials(request, section))


def parse_trusted_proxies(value: str | None) -> tuple[Network, ...]:
    """``--trusted-proxies``: addresses or networks separated by commas or spaces."""
    if not value:
        return ()
    return tuple(parse_network(entry) for entry in value.replace(",", " ").split())
