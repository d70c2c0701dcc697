"""TLS material and a fake upstream behind TLS, for upstream certificate checks (``ca_file``).

    ca = TestCA.create(tmp_path)                      # a self-signed CA (ca.pem)
    cert, key = ca.issue(tmp_path, "upstream", dns=["localhost"], ips=["127.0.0.1"])
    fake = await start_tls_fake(reactor, cert, key, dialect="openai-chat")
    ...  # provider base_url = fake.base_url (https://127.0.0.1:PORT/v1), ca_file = ca.cert_path
    await fake.stop()
"""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

from attrs import define
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import PrivateCertificate

from tests.fakes.upstream import FakeUpstream, TrackingSite


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_key(path: Path, key: Any) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


@define
class TestCA:
    """A certificate authority of the test's own: its certificate is what ``ca_file`` names."""

    __test__ = False  # not a pytest test class

    cert: x509.Certificate
    key: Any
    cert_path: Path

    @classmethod
    def create(cls, directory: Path, name: str = "fproxy test CA") -> TestCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        path = directory / "ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, path)

    def issue(self, directory: Path, stem: str, dns: list[str] = (), ips: list[str] = ()) -> tuple[Path, Path]:
        """A server certificate signed by this CA: (``<stem>.crt``, ``<stem>.key``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(dns) + list(ips))[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path


async def start_tls_fake(reactor: Any, cert: Path, key: Path, dialect: str = "openai-chat",
                         keys: list[str] | None = None) -> FakeUpstream:
    """`tests.fakes.upstream.start_fake`, listening with TLS (certificate ``cert``) on 127.0.0.1."""
    fake = FakeUpstream(reactor, dialect, keys)
    fake._site = TrackingSite(fake.resource(), reactor)
    options = PrivateCertificate.loadPEM(cert.read_bytes() + b"\n" + key.read_bytes()).options()
    fake._port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(fake._site)
    fake.port = fake._port.getHost().port
    origin = f"https://127.0.0.1:{fake.port}"
    fake.base_url = origin if dialect == "anthropic" else origin + "/v1"
    return fake
