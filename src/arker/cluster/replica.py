"""What an API replica of a cluster runs beside the service: the router's
view of the hosts kept fresh, and the takeover loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arker.cluster.router import ClusterEngine
from arker.cluster.takeover import Takeover
from arker.server.service import Service

__all__ = ["replica"]


@asynccontextmanager
async def replica(service: Service) -> AsyncIterator[Takeover]:
    router = service.engine
    if not isinstance(router, ClusterEngine):
        raise TypeError("a cluster replica serves over the cluster engine")
    await router.refresh_hosts()
    takeover = Takeover(service.db, router, service.runs, service.threads, service._forget_vm)
    takeover.start()
    service.takeover = takeover  # type: ignore[attr-defined]
    try:
        yield takeover
    finally:
        await takeover.stop()
