"""TLS for the HTTP port: ``--tls-cert`` and ``--tls-key`` (PEM) turn it into HTTPS and wss://."""

from __future__ import annotations

import re

from OpenSSL import SSL, crypto
from twisted.internet import ssl

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file and the reason."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def server_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Server TLS settings from a PEM certificate file (server first, then chain) and key."""
    blocks = _PEM_CERTIFICATE.findall(_read(cert_path, "certificate"))
    if not blocks:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate")
    try:
        certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as exc:
        raise TLSConfigError(f"{cert_path}: damaged certificate ({exc})") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, _read(key_path, "key"))
    except crypto.Error as exc:
        raise TLSConfigError(f"{key_path} holds no usable PEM private key ({exc})") from None
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=certificates[0],
        extraCertChain=certificates[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()  # checks now, not at the first client, that key and cert match
    except SSL.Error as exc:
        raise TLSConfigError(
            f"the key {key_path} does not belong to the certificate {cert_path} ({exc})"
        ) from None
    return options
