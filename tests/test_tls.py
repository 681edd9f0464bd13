"""HTTPS and wss:// with --tls-cert / --tls-key, using certificates the test makes."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import xmlrpc.client
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect as ws_connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

from tests.support import Broker, run_twistd, startup_refusal, wait_for


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A root CA, an intermediate CA and a server certificate for 127.0.0.1 / localhost.

    The certificate file holds the server certificate and the intermediate, and the
    client trusts only the root: the handshake works only if the chain is served.
    """
    where = tmp_path_factory.mktemp("pki")
    root_key, middle_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
    root = _certificate("RestMQ test root", root_key, "RestMQ test root", root_key, ca=True)
    middle = _certificate("RestMQ test CA", middle_key, "RestMQ test root", root_key, ca=True)
    server = _certificate("127.0.0.1", server_key, "RestMQ test CA", middle_key, ca=False)
    (where / "root.pem").write_bytes(_pem(root))
    (where / "server.pem").write_bytes(_pem(server) + _pem(middle))
    (where / "server.key").write_bytes(_key_pem(server_key))
    (where / "other.key").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    return where


def client_context(pki: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki / "root.pem"))


def https(port: int, context, method: str, path: str, body: str | None = None, headers=None):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tls_broker(pki, tmp_path_factory):
    broker = Broker(
        tmp_path_factory.mktemp("tls"),
        ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")],
    )
    broker.start(wait=False)
    context = client_context(pki)

    def ready():
        if broker.proc.poll() is not None:
            raise AssertionError(broker.log())
        try:
            return https(broker.port, context, "GET", "/stats/")[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, 30, what="the HTTPS broker")
        yield broker
    finally:
        broker.stop()


def test_https_serves_the_protocol_with_a_verified_chain(tls_broker, pki, queue):
    context = client_context(pki)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = https(tls_broker.port, context, "POST", f"/q/{queue}", "value=secret", form)
    assert (status, body) == (200, f"{queue}:1\r\n".encode())
    status, body = https(tls_broker.port, context, "GET", f"/q/{queue}")
    assert status == 200
    assert json.loads(body)["value"] == "secret"
    assert f"RestMQ listening on https://127.0.0.1:{tls_broker.port}/" in tls_broker.log()


def test_tls_is_verified_and_plain_http_gets_no_answer(tls_broker, pki):
    with pytest.raises(ssl.SSLCertVerificationError):
        https(tls_broker.port, ssl.create_default_context(), "GET", "/stats/")
    with socket.create_connection(("127.0.0.1", tls_broker.port), timeout=10) as plain:
        plain.sendall(b"GET /stats/ HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = plain.recv(4096)
        except ConnectionError:
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 200")


def test_xmlrpc_over_https(tls_broker, pki, queue):
    server = xmlrpc.client.ServerProxy(
        f"https://127.0.0.1:{tls_broker.port}/RPC2", context=client_context(pki)
    )
    key = server.add(queue, "over tls")
    assert server.take(queue) == {"queue": queue, "key": key, "value": "over tls"}


def test_wss_consumer(tls_broker, pki, queue):
    with ws_connect(
        f"wss://127.0.0.1:{tls_broker.port}/ws/{queue}",
        ssl=client_context(pki),
        open_timeout=10,
    ) as ws:
        wait_for(
            lambda: (
                json.loads(
                    https(tls_broker.port, client_context(pki), "GET", f"/stats/{queue}")[1]
                )["consumers"]
                == 1
            ),
            10,
            what="the wss consumer",
        )
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, key = https(
            tls_broker.port, client_context(pki), "POST", f"/q/{queue}", "value=hi", form
        )
        assert status == 200
        assert json.loads(ws.recv(timeout=10)) == {"key": key.decode().strip(), "value": "hi"}
        ws.send("echo")
        assert ws.recv(timeout=10) == "echo"
    wait_for(
        lambda: (
            json.loads(https(tls_broker.port, client_context(pki), "GET", f"/stats/{queue}")[1])[
                "consumers"
            ]
            == 0
        ),
        10,
        what="the wss consumer to leave",
    )


def test_wss_closing_handshake_ends_the_tls_connection(tls_broker, pki, queue):
    """Client sends Close: the server answers Close and closes the TLS connection."""
    raw = socket.create_connection(("127.0.0.1", tls_broker.port), timeout=10)
    with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        ws = WSConnection(ConnectionType.CLIENT)
        tls.sendall(ws.send(Request(host="127.0.0.1", target=f"/ws/{queue}")))
        events = []
        while not any(isinstance(e, AcceptConnection) for e in events):
            ws.receive_data(tls.recv(4096))
            events += list(ws.events())
        tls.sendall(ws.send(CloseConnection(code=1000)))
        while True:
            try:
                data = tls.recv(4096)  # a timeout here means the server kept the socket open
            except (ssl.SSLEOFError, ConnectionResetError):
                data = b""
            if not data:
                break
            ws.receive_data(data)
            events += list(ws.events())
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [1000]


def bad_tls_settings(pki: Path, tmp_path: Path) -> list[tuple[list[str], str]]:
    cert, key = str(pki / "server.pem"), str(pki / "server.key")
    return [
        (["--tls-cert", cert], "--tls-cert and --tls-key go together"),
        (["--tls-key", key], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", key], "cannot read the TLS"),
        (["--tls-cert", key, "--tls-key", key], "holds no PEM certificate"),
        (["--tls-cert", cert, "--tls-key", cert], "holds no usable PEM private key"),
        (
            ["--tls-cert", cert, "--tls-key", str(pki / "other.key")],
            "does not belong to the certificate",
        ),
    ]


def test_bad_tls_settings_are_refused_with_a_clear_message(pki, tmp_path):
    for args, complaint in bad_tls_settings(pki, tmp_path):
        message = startup_refusal(tmp_path, *args)
        assert complaint in message, (args, message)
        assert "Traceback" not in message


def test_bad_tls_settings_stop_the_broker_with_a_clear_message(pki, tmp_path):
    args, complaint = bad_tls_settings(pki, tmp_path)[-1]
    result = run_twistd(tmp_path, *args)
    message = result.stdout + result.stderr
    assert result.returncode != 0, args
    assert complaint in message, (args, message)
    assert "Traceback" not in message
