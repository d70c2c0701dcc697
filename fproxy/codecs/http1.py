"""HTTP/1.1 answer heads and request heads as bytes: pure functions for the upstream client.

No Twisted here: `parse_head` reads an answer's status line and headers in one pass,
`build_head` writes a request's, and `RawHeaders` answers the lookups the gateway makes
(the part of ``twisted.web.http_headers.Headers`` it reads).
"""
from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """The upstream's bytes are not HTTP/1.1 we can read."""


class RawHeaders:
    """An answer's headers, with the part of ``twisted.web.http_headers.Headers`` we read."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._items = items  # (lower-case name, value) in arrival order
        self._map: dict[bytes, list[bytes]] | None = None

    def _index(self) -> dict[bytes, list[bytes]]:
        if self._map is None:
            m: dict[bytes, list[bytes]] = {}
            for k, v in self._items:
                m.setdefault(k, []).append(v)
            self._map = m
        return self._map

    def getRawHeaders(self, name: bytes | str, default: Any = None) -> Any:  # noqa: N802 - Headers' name
        if isinstance(name, str):
            name = name.encode("ascii")
        values = self._index().get(name.lower())
        return list(values) if values else default

    def hasHeader(self, name: bytes | str) -> bool:  # noqa: N802
        return self.getRawHeaders(name) is not None

    def getAllRawHeaders(self) -> Any:  # noqa: N802
        return iter(self._index().items())


def parse_head(head: bytes) -> tuple[int, bytes, RawHeaders, bool]:
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:60]!r}")
    try:
        code = int(status[1])
    except ValueError:
        raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
    if not 100 <= code <= 999:
        raise ProtocolError(f"bad status code {code}")
    items: list[tuple[bytes, bytes]] = []
    keep = status[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise ProtocolError(f"bad header line {line[:60]!r}")
        name = name.lower()
        value = value.strip()
        if name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens and status[0] == b"HTTP/1.0":
                keep = True
        items.append((name, value))
    return code, status[2] if len(status) > 2 else b"", RawHeaders(items), keep


def build_head(method: bytes, path: bytes, host: bytes, port: int, tls: bool, headers: Any) -> bytes:
    """Request line and headers (``Host`` added when absent), up to the body's length line.

    Framing headers in ``headers`` are dropped: the caller adds ``content-length``.
    """
    lines = [method + b" " + path + b" HTTP/1.1\r\n"]
    has_host = False
    for name, values in headers.getAllRawHeaders():
        lname = name.lower()
        if lname == b"host":
            has_host = True
        elif lname in (b"content-length", b"transfer-encoding", b"connection"):
            continue
        for v in values:
            lines.append(name + b": " + v + b"\r\n")
    if not has_host:
        if port != (443 if tls else 80):
            host += b":%d" % port
        lines.insert(1, b"Host: " + host + b"\r\n")
    return b"".join(lines)
