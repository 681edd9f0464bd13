"""Addresses and networks as acl.conf and ``--trusted-proxies`` write them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from restmq.access.acl import AclError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_PREFIX = re.compile(r"\d{1,3}(\.\d{1,3}){0,2}\.|\d{1,3}(\.\d{1,3}){1,2}")
_IPV6_PREFIX = re.compile(r"([0-9a-fA-F]{1,4}:){1,7}")
_HOST_PORT = re.compile(r"\[(?P<v6>[^\]]+)\](:\d+)?|(?P<v4>[\d.]+):\d+")


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
