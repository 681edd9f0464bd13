"""Salted scrypt password hashes for acl.conf, and the ``restmq-passwd`` command.

A hash reads ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (salt and key in base64), so
acl.conf can say ``password = scrypt$16384$8$1$...`` instead of the password.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass

PREFIX = "scrypt$"
# ~16 MiB and a few tens of milliseconds per check: costly to guess, cheap enough to verify.
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
# Limits for hashes read from acl.conf, so that a typo cannot make every request cost seconds.
MAX_N, MAX_R, MAX_P = 2**20, 32, 16
MAX_MEMORY = 256 * 1024 * 1024


class BadHash(ValueError):
    """A ``scrypt$...`` text that is not a hash this module can check."""


@dataclass(frozen=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        key = base64.b64encode(self.key).decode("ascii")
        return f"{PREFIX}{self.n}${self.r}${self.p}${salt}${key}"

    def derive(self, password: bytes) -> bytes:
        return _scrypt(password, self.salt, self.n, self.r, self.p, len(self.key))

    def matches(self, password: bytes) -> bool:
        """True when ``password`` is the one this hash was made from (constant-time compare)."""
        return hmac.compare_digest(self.derive(password), self.key)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    memory = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=memory)


def is_hash(text: str) -> bool:
    return text.startswith(PREFIX)


def hash_password(password: str, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new salted ``scrypt$...`` hash of ``password``."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password.encode("utf-8"), salt, n, r, p, KEY_BYTES)
    return str(ScryptHash(n, r, p, salt, key))


def parse_hash(text: str) -> ScryptHash:
    """Read a ``scrypt$n$r$p$salt$key`` text; BadHash says what is wrong with it."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise BadHash("a scrypt hash reads scrypt$N$r$p$SALT$KEY (make one with restmq-passwd)")
    try:
        n, r, p = (int(part, 10) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise BadHash("the scrypt hash is damaged (make a new one with restmq-passwd)") from None
    if n < 2 or n & (n - 1) or n > MAX_N:
        raise BadHash(f"scrypt N must be a power of 2 from 2 to {MAX_N}, not {n}")
    if not 1 <= r <= MAX_R or not 1 <= p <= MAX_P or 128 * r * (n + p) > MAX_MEMORY:
        raise BadHash(f"scrypt r={r}, p={p} are out of range")
    if len(salt) < 8 or len(key) < 16:
        raise BadHash("the scrypt hash is too short (make a new one with restmq-passwd)")
    return ScryptHash(n, r, p, salt, key)


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("restmq-passwd: the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: list[str] | None = None) -> None:
    """``restmq-passwd [PASSWORD]``: print a hash to paste into acl.conf as ``password = ...``."""
    parser = argparse.ArgumentParser(
        prog="restmq-passwd",
        description=(
            "Print a salted scrypt hash of a password, for 'password = ...' in acl.conf. "
            "Without PASSWORD it is asked for (or read as one line from standard input)."
        ),
    )
    parser.add_argument(
        "password", nargs="?", help="the password (beware: it stays in your shell history)"
    )
    args = parser.parse_args(argv)
    password = _read_password(args)
    if not password:
        raise SystemExit("restmq-passwd: the password is empty")
    print(hash_password(password))


if __name__ == "__main__":
    main()
