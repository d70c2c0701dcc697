"""Write-through for TCP transports: send at once when nothing is queued before the bytes.

A Twisted transport's ``write`` only queues: the bytes leave on the reactor's next turn, after
an ``epoll_ctl`` to watch for writability, an ``epoll_wait`` that reports it, and another
``epoll_ctl`` to stop watching.  For a gateway that is two hops per answer (the request to the
upstream, the answer to the client), each costing a reactor turn and whatever else the reactor
runs first -- the bookkeeping of the call just answered, other connections' reads.  When the
transport's queue is empty, the same bytes can go straight to the socket (``writeSomeData``,
the method ``doWrite`` itself uses); whatever the kernel does not take is queued as before, so
ordering, flow control (producers paused on a full queue) and error handling stay Twisted's.
Anything but a plain TCP connection (TLS, HTTP/2 streams, test transports) takes ``write``.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import tcp

_PLAIN = (tcp.Server, tcp.Client)


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sent at once when nothing is queued ahead of it."""
    if type(transport) in _PLAIN and data and transport.connected and not transport.disconnecting \
            and not transport._writeDisconnected \
            and not transport._tempDataLen and len(transport.dataBuffer) == transport.offset:
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
        # a lost connection: the queued write makes doWrite find it and close as usual
    transport.write(data)
