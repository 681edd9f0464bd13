"""Who a request comes from: its address (through trusted proxies) and its credentials."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from restmq.access.acl import COOKIE_SECTIONS
from restmq.access.addresses import Address, Network, parse_address, parse_network


def header_values(headers: Any, name: str) -> list[str]:
    get_list = getattr(headers, "get_list", None)
    if get_list is not None:
        return list(get_list(name))
    value = headers.get(name)
    return [value] if value else []


def basic_credentials(headers: Any) -> tuple[str, str] | None:
    """User and password of an ``Authorization: Basic`` header, if there is a readable one."""
    for value in header_values(headers, "Authorization"):
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
    for value in header_values(headers, "Cookie"):
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


def parse_trusted_proxies(value: str | None) -> tuple[Network, ...]:
    """``--trusted-proxies``: addresses or networks separated by commas or spaces."""
    if not value:
        return ()
    return tuple(parse_network(entry) for entry in value.replace(",", " ").split())


def _trusted(address: Address, proxies: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in proxies)


def client_address(
    peer: str | None, headers: Any, trusted_proxies: tuple[Network, ...]
) -> Address | None:
    """The client's address: the socket peer, or what a trusted proxy says it forwarded."""
    address = parse_address(peer)
    if address is None or not _trusted(address, trusted_proxies):
        return address
    hops = [
        hop.strip()
        for value in header_values(headers, "X-Forwarded-For")
        for hop in value.split(",")
        if hop.strip()
    ]
    if hops:
        # Each proxy appends the peer it saw: the right-most hop that is not one of
        # our proxies is the client; anything left of it may be made up.
        for hop in reversed(hops):
            hop_address = parse_address(hop)
            if hop_address is None or not _trusted(hop_address, trusted_proxies):
                return hop_address
        return parse_address(hops[0])
    real_ip = header_values(headers, "X-Real-IP")
    if real_ip:
        return parse_address(real_ip[-1])
    return address


def credentials(headers: Any, section: str) -> list[tuple[str, str]]:
    """The user and password pairs a request carries for ``section``: HTTP Basic, and in
    the cookie sections the original's ``auth=user:password`` cookie too."""
    found = []
    basic = basic_credentials(headers)
    if basic is not None:
        found.append(basic)
    if section in COOKIE_SECTIONS:
        cookie = cookie_credentials(headers)
        if cookie is not None:
            found.append(cookie)
    return found
