"""Run the real gateway service in the test's reactor on 127.0.0.1:0."""
from __future__ import annotations

from typing import Any

from attrs import define
from twisted.internet.endpoints import serverFromString

from fproxy.config import from_dict
from fproxy.service import GatewayService


@define
class RunningGateway:
    service: GatewayService
    port: Any
    url: str

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.service.stopService()


async def start_gateway(reactor: Any, conf: dict[str, Any], env: dict[str, str] | None = None) -> RunningGateway:
    conf = {"store": {"url": "sqlite::memory:"}, **conf}  # no fproxy.db left in the working directory
    cfg = from_dict(conf, env or {})
    svc = GatewayService(reactor, cfg, listen=())
    svc.startService()
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(svc.site)
    return RunningGateway(svc, port, f"http://127.0.0.1:{port.getHost().port}")


def provider(name: str, dialect: str, base_url: str, keys: list[str], **more: Any) -> dict[str, Any]:
    return {"name": name, "dialect": dialect, "base_url": base_url, "keys": keys, **more}
