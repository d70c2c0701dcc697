"""TLS for ``ssl:`` listeners: TLS 1.2+, modern ciphers (Twisted's defaults), and ALPN offering
HTTP/2 when the ``h2`` package is installed (Twisted's ``ssl:`` parser sets no ALPN, so a
plain ``ssl:`` listener would never negotiate h2)."""
from __future__ import annotations

import re

from twisted.internet import endpoints, ssl
from twisted.python.filepath import FilePath


def h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


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
    protocols = [b"h2", b"http/1.1"] if h2_available() else [b"http/1.1"]
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=chain,
        dhParameters=dh,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=protocols,
    )


def ssl_endpoint(reactor: object, description: str) -> endpoints.SSL4ServerEndpoint:
    """An ``ssl:`` description as an endpoint with `context_factory_for`'s options."""
    args, kw = endpoints._parse(description)
    port = int(args[1]) if len(args) > 1 else int(kw.get("port", 443))
    return endpoints.SSL4ServerEndpoint(reactor, port, context_factory_for(description),
                                        backlog=int(kw.get("backlog", 50)), interface=kw.get("interface", ""))
