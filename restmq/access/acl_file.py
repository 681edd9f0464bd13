"""Reading acl.conf: its text into the rules of its sections.

The file is INI. Each section guards a family of routes (``rest:producer``,
``rest:consumer``, ``comet:consumer``, ``websocket:consumer``) with up to four
keys: ``hosts_allow``, ``hosts_deny`` (space-separated addresses, prefixes such
as ``192.168.0.``, CIDR networks, IPv6, or ``all``), ``username`` and
``password`` (plain, or a ``scrypt$...`` hash from ``restmq-passwd``). How the
rules decide is told in restmq.access.rules.
"""

from __future__ import annotations

import configparser
from typing import Any

from restmq.access import passwd
from restmq.access.acl import KEYS, SECTIONS, AclError
from restmq.access.addresses import parse_hosts
from restmq.access.rules import AccessRules, SectionRules


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
