"""fproxy.tls: ALPN (h2) and TLS 1.2+ on tls: contexts; refusing a bad certificate directory.

Handshakes run in memory (pyOpenSSL connections over memory BIOs): no socket.  The ``ssl:``
listener (Twisted's own ALPN support) is covered end to end in tests/integration/test_tls_h2.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from fproxy import tls
from tests.integration.twistd_support import self_signed


def _pump(client: SSL.Connection, server: SSL.Connection) -> None:
    """Run a handshake between two memory-BIO connections to its end (or raise the server's error)."""
    for _ in range(10):
        done = True
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                done = False
        for src, dst in ((client, server), (server, client)):
            try:
                dst.bio_write(src.bio_read(65536))
            except SSL.WantReadError:
                pass
        if done:
            return
    raise AssertionError("the handshake did not finish")


def _connect(context: SSL.Context, offered: list[bytes], server_name: bytes | None = None,
             max_version: int | None = None) -> tuple[SSL.Connection, SSL.Connection]:
    server = SSL.Connection(context, None)
    server.set_accept_state()
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.set_alpn_protos(offered)
    if max_version is not None:
        client_ctx.set_max_proto_version(max_version)
        client_ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
    client = SSL.Connection(client_ctx, None)
    if server_name:
        client.set_tlsext_host_name(server_name)
    client.set_connect_state()
    return client, server


def _negotiate(context: SSL.Context, offered: list[bytes], server_name: bytes | None = None) -> tuple[bytes, str]:
    client, server = _connect(context, offered, server_name)
    _pump(client, server)
    return client.get_alpn_proto_negotiated(), client.get_protocol_version_name()


def _server_context(tmp_path: Path) -> SSL.Context:
    cert, key = self_signed(tmp_path)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_file(str(cert))
    ctx.use_privatekey_file(str(key))
    return ctx


def test_offer_alpn_prefers_h2_and_keeps_http11(tmp_path: Path) -> None:
    ctx = _server_context(tmp_path)
    tls._offer_alpn(ctx, [b"h2", b"http/1.1"])
    tls._offer_alpn(ctx, [b"h2", b"http/1.1"])  # idempotent
    assert _negotiate(ctx, [b"http/1.1", b"h2"]) == (b"h2", "TLSv1.3")
    assert _negotiate(ctx, [b"http/1.1"])[0] == b"http/1.1"
    assert tls.alpn_protocols() == [b"h2", b"http/1.1"]  # h2 is installed with twisted[http2]


def test_offer_alpn_refuses_tls_below_1_2(tmp_path: Path) -> None:
    def permissive() -> SSL.Context:  # a context that would accept TLS 1.1 (whatever openssl.cnf says)
        c = _server_context(tmp_path)
        c.set_min_proto_version(SSL.TLS1_VERSION)
        c.set_cipher_list(b"ALL:@SECLEVEL=0")
        return c

    client, server = _connect(permissive(), [b"http/1.1"], max_version=SSL.TLS1_1_VERSION)
    _pump(client, server)
    assert client.get_protocol_version_name() == "TLSv1.1"
    ctx = permissive()
    tls._offer_alpn(ctx, [b"h2", b"http/1.1"])
    client, server = _connect(ctx, [b"http/1.1"], max_version=SSL.TLS1_1_VERSION)
    with pytest.raises(SSL.Error, match="unsupported protocol"):
        _pump(client, server)


def test_sni_directory_contexts_offer_h2_for_every_name(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = self_signed(tmp_path)  # DNS name: localhost
    (certs / "localhost.pem").write_bytes(key.read_bytes() + cert.read_bytes())
    lookup = tls.sni_lookup(str(certs))
    ctx = lookup(b"localhost")
    assert ctx is not None and lookup(None) is ctx, "no SNI: the first certificate"
    assert _negotiate(ctx, [b"h2", b"http/1.1"], b"localhost") == (b"h2", "TLSv1.3")
    assert lookup(b"unknown.example") is None


def test_sni_directory_without_certificates_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no .pem file"):
        tls.sni_lookup(str(tmp_path))
    with pytest.raises(ValueError, match="certificate directory"):
        tls.sni_endpoint(Clock(), "tls:port=443")


def test_server_endpoint_kinds_and_adopted_wrapping(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    desc = f"ssl:0:privateKey={quoteStringArgument(str(key))}:certKey={quoteStringArgument(str(cert))}"
    site = Site(Resource())
    assert isinstance(tls.wrap_adopted(desc, site), TLSMemoryBIOFactory)
    assert tls.wrap_adopted("tcp:0", site) is site
    assert tls.kind_of("SSL:443") == "ssl" and tls.kind_of("tls:/x:port=1") == "tls"
    with pytest.raises(ValueError):
        tls.server_endpoint(Clock(), "nonsense:1")
