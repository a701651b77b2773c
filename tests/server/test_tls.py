"""TLS on a real `seekd serve` with certificates made here: TLS 1.3 only by default (a 1.2 client is
refused), 1.2 only when asked for, and with a client CA (mTLS) no client gets in without a certificate."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import ServerHandle, running_server

pytestmark = pytest.mark.slow

API_KEY = "sk-seekd-single-user-key-for-tls-tests"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer_key, issuer_name: x509.Name | None, *, ca: bool, server: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(folder: Path, name: str, key, cert) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue("seekd test CA", None, None, ca=True)
    ca_path, _ = _write(folder, "ca", ca_key, ca_cert)
    server_cert, server_key = _write(
        folder, "server", *_issue("127.0.0.1", ca_key, ca_cert.subject, ca=False, server=True)
    )
    client_cert, client_key = _write(folder, "client", *_issue("client-1", ca_key, ca_cert.subject, ca=False))
    return {
        "ca": ca_path,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def client_context(
    pki: dict[str, Path], *, max_version: ssl.TLSVersion | None = None, with_cert: bool = False
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if max_version is not None:
        ctx.maximum_version = max_version
    if with_cert:
        ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    return ctx


def handshake(server: ServerHandle, ctx: ssl.SSLContext) -> str:
    """The negotiated version, after sending one request (a TLS 1.3 server checks the client's
    certificate after the handshake, so a refusal may only show on the first read)."""
    url = urlparse(server.base_url)
    with (
        socket.create_connection((url.hostname, url.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=url.hostname) as tls,
    ):
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = tls.recv(1024)
        if not reply:
            raise ConnectionError("server closed the connection")
        assert reply.startswith(b"HTTP/1.1 200"), reply
        return tls.version()


def serve_tls(data_dir: Path, log_dir: Path, pki: dict[str, Path], client: ssl.SSLContext, *extra: str):
    flags = [
        "--ssl-certfile",
        str(pki["server_cert"]),
        "--ssl-keyfile",
        str(pki["server_key"]),
        "--api-key",
        API_KEY,
        *extra,
    ]
    return running_server(
        data_dir,
        log_dir / "server.log",
        *flags,
        scheme="https",
        client_options={"verify": client, "headers": {"Authorization": f"Bearer {API_KEY}"}},
    )


@pytest.fixture(scope="module")
def tls_server(data_dir: Path, pki, tmp_path_factory) -> ServerHandle:
    with serve_tls(data_dir, tmp_path_factory.mktemp("tls-log"), pki, client_context(pki)) as handle:
        yield handle


def test_tls13_works_and_tls12_is_refused_by_default(tls_server: ServerHandle, pki) -> None:
    assert handshake(tls_server, client_context(pki)) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(tls_server, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that checks certificates refuses a stranger's
        handshake(tls_server, ssl.create_default_context())
    with httpx.Client(verify=client_context(pki)) as client:
        assert client.get(f"{tls_server.api_url}/models").status_code == 401
        models = client.get(f"{tls_server.api_url}/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert models.status_code == 200 and models.json()["data"]
    assert "https://127.0.0.1" in tls_server.log()


def test_mtls_refuses_clients_without_a_certificate_and_tls12_is_an_option(data_dir: Path, pki, tmp_path: Path) -> None:
    with_cert = client_context(pki, with_cert=True)
    flags = ("--ssl-ca-certs", str(pki["ca"]), "--ssl-min-version", "1.2")
    with serve_tls(data_dir, tmp_path, pki, with_cert, *flags) as server:
        assert handshake(server, with_cert) == "TLSv1.3"
        assert handshake(server, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2, with_cert=True)) == "TLSv1.2"
        for without in (client_context(pki), client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                handshake(server, without)
        with httpx.Client(verify=client_context(pki)) as client, pytest.raises(httpx.TransportError):
            client.get(f"{server.base_url}/health")
