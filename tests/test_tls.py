"""The optional TCP listener: loopback by default, TLS and client certificates when asked."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.backends import OnnxRuntimeProvider
from edge_agent.models import ModelManager
from edge_agent.server import create_server, tcp_address, tls_credentials


@dataclass
class Pki:
    ca: bytes
    server_cert: Path
    server_key: Path
    ca_path: Path
    client_cert: bytes
    client_key: bytes
    stranger_cert: bytes
    stranger_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name: str, issuer_key, *, ca: bool = False, san: bool = False) -> x509.Certificate:  # type: ignore[no-untyped-def]
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    server_key = _key()
    server = _cert("localhost", server_key, "test-ca", ca_key, san=True)
    client_key = _key()
    client = _cert("line-3-client", client_key, "test-ca", ca_key)
    stranger_ca_key = _key()
    stranger_key = _key()
    stranger = _cert("stranger", stranger_key, "other-ca", stranger_ca_key)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server.key").write_bytes(_pem_key(server_key))
    return Pki(ca.public_bytes(pem), directory / "server.pem", directory / "server.key", directory / "ca.pem",
               client.public_bytes(pem), _pem_key(client_key), stranger.public_bytes(pem), _pem_key(stranger_key))


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tls_agent(models_dir: Path, short_tmp: Path, pki: Pki, request: pytest.FixtureRequest) -> Iterator[int]:
    mutual = getattr(request, "param", False)
    manager = ModelManager([models_dir], OnnxRuntimeProvider(intra_op_threads=1, isolate_loads=False))
    port = _port()
    credentials = tls_credentials(str(pki.server_cert), str(pki.server_key), str(pki.ca_path) if mutual else None)
    agent = create_server(manager, [f"unix:{short_tmp}/agent.sock", f"127.0.0.1:{port}"], worker_threads=4,
                          max_concurrent_rpcs=8, tls=credentials)
    agent.start()
    try:
        yield port
    finally:
        agent.stop(1.0)


def _list(channel: grpc.Channel) -> int:
    return len(pb2_grpc.EdgeAgentStub(channel).ListModels(pb2.ListModelsRequest(), timeout=10).models)


def test_tls_listener_serves_clients_that_trust_the_ca(tls_agent: int, pki: Pki) -> None:
    with grpc.secure_channel(f"localhost:{tls_agent}", grpc.ssl_channel_credentials(pki.ca)) as channel:
        assert _list(channel) == 3


def test_tls_listener_refuses_plaintext_clients(tls_agent: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tls_agent}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            _list(channel)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("tls_agent", [True], indirect=True)
def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(tls_agent: int, pki: Pki) -> None:
    good = grpc.ssl_channel_credentials(pki.ca, private_key=pki.client_key, certificate_chain=pki.client_cert)
    with grpc.secure_channel(f"localhost:{tls_agent}", good) as channel:
        assert _list(channel) == 3
    for key, chain in ((None, None), (pki.stranger_key, pki.stranger_cert)):
        bad = grpc.ssl_channel_credentials(pki.ca, private_key=key, certificate_chain=chain)
        with grpc.secure_channel(f"localhost:{tls_agent}", bad) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _list(channel)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_bare_port_binds_loopback_only() -> None:
    assert tcp_address("50051") == "127.0.0.1:50051"
    assert tcp_address("0.0.0.0:50051") == "0.0.0.0:50051"
    assert tcp_address("[::1]:50051") == "[::1]:50051"
    with pytest.raises(OSError, match="not PORT or HOST:PORT"):
        tcp_address("localhost")


def test_tls_credentials_name_the_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="TLS certificate .*missing.pem"):
        tls_credentials(str(tmp_path / "missing.pem"), str(tmp_path / "key.pem"))
