"""TLS listeners: ``ssl:`` (one certificate) and ``tls:`` (a directory of certificates chosen by SNI).

Both serve TLS 1.2 or newer with Twisted's default cipher list (forward-secret AEAD suites
only), and offer HTTP/2 by ALPN when the ``h2`` package is installed (``twisted[http2]``):
twisted.web's `Site` then speaks h2 on connections that negotiated it and HTTP/1.1 on the others.

Why our own endpoints: Twisted's ``ssl:`` parser sets no ALPN protocols and its ``tls:`` parser
builds one `CertificateOptions` per certificate without them either, so through plain
``strports.service`` neither would ever negotiate h2.  `listen_service` builds the same
endpoints with ALPN; every other description goes to `serverFromString` unchanged.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.filepath import FilePath

log = Logger()

TLS_KINDS = ("ssl", "tls")


def h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def alpn_protocols() -> list[bytes]:
    """What we offer by ALPN, in preference order."""
    return [b"h2", b"http/1.1"] if h2_available() else [b"http/1.1"]


def kind_of(description: str) -> str:
    """The endpoint type of a strports description (``tcp``, ``ssl``, ``tls``, ...)."""
    return description.split(":", 1)[0].strip().lower()


# ---------------------------------------------------------------- ssl: one certificate
def context_factory_for(description: str) -> ssl.CertificateOptions:
    """The server TLS options of an ``ssl:PORT:privateKey=KEY[:certKey=CERT][:extraCertChain=..]`` description."""
    args, kw = endpoints._parse(description)  # Twisted's strports tokenizer
    key_path = kw.get("privateKey", "server.pem")
    cert_path = kw.get("certKey", key_path)
    pem = FilePath(cert_path).getContent() + b"\n" + FilePath(key_path).getContent()
    private = ssl.PrivateCertificate.loadPEM(pem)
    chain = None
    if "extraCertChain" in kw:
        text = FilePath(kw["extraCertChain"]).getContent().decode()
        found = re.findall(r"(-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----)", text, flags=re.DOTALL)
        chain = [ssl.Certificate.loadPEM(c).original for c in found]
    dh = ssl.DiffieHellmanParameters.fromFile(FilePath(kw["dhParameters"])) if "dhParameters" in kw else None
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=chain,
        dhParameters=dh,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=alpn_protocols(),
    )


def ssl_endpoint(reactor: object, description: str) -> endpoints.SSL4ServerEndpoint:
    """An ``ssl:`` description as an endpoint with `context_factory_for`'s options."""
    args, kw = endpoints._parse(description)
    port = int(args[1]) if len(args) > 1 else int(kw.get("port", 443))
    return endpoints.SSL4ServerEndpoint(reactor, port, context_factory_for(description),
                                        backlog=int(kw.get("backlog", 50)), interface=kw.get("interface", ""))


# ---------------------------------------------------------------- tls: certificates by SNI
def _offer_alpn(context: SSL.Context, protocols: list[bytes]) -> None:
    """Make a server context choose the first of ``protocols`` the client offers (ALPN)."""
    if getattr(context, "_fproxy_alpn", False):
        return

    def select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for p in protocols:
            if p in offered:
                return p
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

    context.set_alpn_select_callback(select)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context._fproxy_alpn = True  # type: ignore[attr-defined]


def sni_lookup(path: str) -> Callable[[bytes | None], SSL.Context | None]:
    """Twisted's ``tls:`` certificate directory lookup, with ALPN on every context.

    The directory holds ``*.pem`` files (key, certificate and chain), mapped to names by each
    certificate's DNS subject alternative names; an unknown name re-reads the directory (as
    Twisted's does).  A connection without SNI gets the first certificate.  The servername
    callback switches a connection to the context of its name: each of those contexts gets
    the ALPN callback when the directory is (re)read, before any handshake can use it.
    """
    from twisted.protocols._sni import PEMObjects  # the loader Twisted's own tls: endpoint uses

    directory = FilePath(path)
    protocols = alpn_protocols()
    by_name: dict[str, ssl.CertificateOptions] = {}

    def reload() -> None:
        nonlocal by_name
        mapping = PEMObjects.fromDirectory(directory).inferDomainMapping()
        for options in mapping.values():
            _offer_alpn(options.getContext(), protocols)
        by_name = mapping

    def lookup(name: bytes | None, retry: bool = True) -> SSL.Context | None:
        if name in (None, b""):
            name = next(iter(by_name), "").encode()
        assert name is not None
        options = by_name.get(name.decode("ascii", "replace"))
        if options is None and b"." in name:
            options = by_name.get("*." + name.decode("ascii", "replace").split(".", 1)[1])
        if options is not None:
            return options.getContext()
        if not retry:
            log.warn("tls: no certificate for {name!r} in {path}", name=name, path=path)
            return None
        reload()
        return lookup(name, False)

    reload()
    if not by_name:
        raise ValueError(f"{path}: no .pem file with a matching private key and certificate (with DNS names)")
    return lookup


def sni_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """``tls:DIRECTORY[:port=443][:interface=::][:backlog=50]`` with ALPN (see `sni_lookup`)."""
    from twisted.protocols._sni import SNIConnectionCreator

    args, kw = endpoints._parse(description)
    if len(args) < 2:
        raise ValueError("tls: needs a certificate directory, e.g. tls:/etc/fproxy/certs:port=8443")
    tcp = endpoints.TCP6ServerEndpoint(reactor, int(kw.get("port", 443)), int(kw.get("backlog", 50)),
                                       kw.get("interface", "::"))
    return endpoints.wrapServerTLS(SNIConnectionCreator(sni_lookup(args[1])), tcp)


def sni_connection_creator(description: str) -> Any:
    """The server connection creator of a ``tls:`` description (for an adopted socket)."""
    from twisted.protocols._sni import SNIConnectionCreator

    args, _ = endpoints._parse(description)
    return SNIConnectionCreator(sni_lookup(args[1]))


# ---------------------------------------------------------------- any listener
def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """The endpoint of a strports description; ``ssl:`` and ``tls:`` with TLS 1.2+ and ALPN (h2)."""
    kind = kind_of(description)
    if kind == "ssl":
        return ssl_endpoint(reactor, description)
    if kind == "tls":
        return sni_endpoint(reactor, description)
    return endpoints.serverFromString(reactor, description)


def listen_service(reactor: Any, description: str, factory: IProtocolFactory) -> StreamServerEndpointService:
    """Like ``strports.service``: a bad port or certificate fails the start at once."""
    svc = StreamServerEndpointService(server_endpoint(reactor, description), factory)
    svc._raiseSynchronously = True
    return svc


def wrap_adopted(description: str, factory: IProtocolFactory) -> IProtocolFactory:
    """For a socket adopted from the ``--workers`` parent: TLS around ``factory`` for ssl: and tls:."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    kind = kind_of(description)
    if kind == "ssl":
        return TLSMemoryBIOFactory(context_factory_for(description), False, factory)
    if kind == "tls":
        return TLSMemoryBIOFactory(sni_connection_creator(description), False, factory)
    return factory
