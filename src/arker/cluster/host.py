"""`arker host`: one machine's engine behind the internal host API.

An ASGI app (Starlette) over a local namespace engine, called by the API
replicas with the host token (never an org key). The host holds a lease in
PostgreSQL (leases.py); it acts on a VM only while `may_act` says so, and
refuses every call while its lease is lost. After each acquisition it
deletes, locally, every VM not placed on it under its new fence (the ones
taken over while it was gone), without touching their checkpoints in S3.

A durable VM's checkpoint is shipped to the blob store before
`checkpoint` returns: a durable run starts only once it is safe there.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from ulid import ULID

from arker.cluster.hostapi import HostExtras
from arker.cluster.hostapp import host_routes
from arker.cluster.leases import (
    DEFAULT_TTL_S,
    HostCard,
    Lease,
    LeaseCallbacks,
    LeaseKeeper,
    may_act,
)
from arker.cluster.remote import FENCE_HEADER
from arker.engine.base import Engine, GoldenInfo, Limits, NetworkPolicy
from arker.errors import ArkerError, ErrorCode
from arker.server.store import Database, Placement

__all__ = ["HostAgent", "build_host_app", "token_hash"]

log = logging.getLogger("arker.host")
# A checkpoint's manifest is written only while the lease stays live this much
# longer (on top of the lease's own safety margin): time for its put.
COMMIT_MARGIN_S = 0.5


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def capacity() -> dict[str, float]:
    """Free memory and CPU as this machine sees them now."""
    info: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            info[name] = int(rest.split()[0]) * 1024
    cores = float(os.cpu_count() or 1)
    load = os.getloadavg()[0]
    return {
        "memory_free_bytes": float(info.get("MemAvailable", 0)),
        "memory_total_bytes": float(info.get("MemTotal", 0)),
        "cpu_free": max(0.0, cores - load),
        "cpu_total": cores,
    }


class HostAgent(HostExtras):
    """What the host API calls: the local engine's methods (by delegation),
    with the cluster's additions around a few of them."""

    def __init__(self, engine: Engine, shipper: Any | None) -> None:
        self.engine = engine
        self.shipper = shipper  # arker.cluster.checkpoints.Shipper; None: no blob store
        self.adopted: dict[str, str] = {}  # vm_id -> the checkpoint it was restored from
        # May this host still commit a checkpoint of the VM (its lease, with a
        # margin for the manifest's put)? Set by build_host_app.
        self.may_commit: Callable[[str], bool] = lambda _vm_id: True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        self.engine.checkpoint(vm_id, checkpoint_id)
        if self.shipper is not None:
            self.shipper.ship(vm_id, checkpoint_id, lambda: self.may_commit(vm_id))

    def restore(self, vm_id: str, checkpoint_id: str) -> None:
        """As the engine's; a VM just adopted from that very checkpoint (which
        the blob store held, not this pool) is already as it was there."""
        adopted = self.adopted.get(vm_id) == checkpoint_id
        if adopted and checkpoint_id not in self.engine.checkpoints(vm_id):
            self.engine.stop(vm_id)
            return
        self.engine.restore(vm_id, checkpoint_id)

    def delete(self, vm_id: str) -> None:
        """A delete the cluster asked for: the VM and its checkpoints in S3."""
        self.engine.delete(vm_id)
        if self.shipper is not None:
            self.shipper.forget(vm_id)

    def fork(self, source: str, vm_id: str, **kwargs: Any) -> None:
        known = self.has_golden(source) or source in self.engine.vm_ids()
        if self.shipper is not None and not known:
            self.shipper.fetch_golden(source)  # first use of a published golden here
        self.engine.fork(source, vm_id, **kwargs)

    def has_golden(self, name: str) -> bool:
        return any(g.name == name for g in self.engine.goldens())

    def build_golden(self, name: str, progress: Any = None) -> GoldenInfo:
        info = self.engine.build_golden(name, progress)
        if self.shipper is not None:
            self.shipper.publish_golden(name)
        return info

    def import_golden(
        self, name: str, tarball: str, progress: Any = None, **kwargs: Any
    ) -> GoldenInfo:
        info = self.engine.import_golden(name, tarball, progress, **kwargs)
        if self.shipper is not None:
            self.shipper.publish_golden(name)
        return info

    def publish_golden(self, vm_id: str, name: str, description: str | None = None) -> GoldenInfo:
        info = self.engine.publish_golden(vm_id, name, description)
        if self.shipper is not None:
            self.shipper.publish_golden(name)
        return info

    def adopt(
        self,
        vm_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> str | None:
        if self.shipper is None:
            raise ArkerError(ErrorCode.UNSUPPORTED_OPERATION, "this host has no blob store")
        if vm_id in self.engine.vm_ids():
            self.engine.delete(vm_id)  # an earlier life's copy: S3 has the truth
        restored: str | None = self.shipper.restore_latest(
            vm_id, hostname=hostname, limits=limits, network=network
        )
        if restored is not None:
            self.adopted[vm_id] = restored
        return restored


class Ownership:
    """Which VMs this host may act on: their placements, read at each
    renewal and on a miss, judged by `may_act`."""

    def __init__(self, db: Database, keeper: LeaseKeeper) -> None:
        self.db, self.keeper = db, keeper
        self.placed: dict[str, tuple[str, int]] = {}

    async def refresh(self, lease: Lease) -> None:
        async with self.db.session() as s:
            rows = await s.execute(
                select(Placement.vm_id, Placement.host_id, Placement.fence).where(
                    Placement.host_id == lease.host_id
                )
            )
            self.placed = {vm_id: (host, int(fence)) for vm_id, host, fence in rows}

    async def check(self, vm_id: str, unplaced_ok: bool = False) -> None:
        """Raise unless this host may act on `vm_id` now (`unplaced_ok`: or
        it is no VM of the cluster at all: a fork's source may be a golden)."""
        lease = self.keeper.current()
        if not may_act(lease, self.placed.get(vm_id)):
            async with self.db.session() as s:
                row = await s.get(Placement, vm_id)
            if row is None and unplaced_ok:
                return
            if row is not None:
                self.placed[vm_id] = (row.host_id, int(row.fence))
            if not may_act(lease, self.placed.get(vm_id)):
                raise ArkerError(
                    ErrorCode.CONFLICT, f"vm {vm_id!r} is not placed on this host (any more)"
                )


def build_host_app(
    *,
    database_url: str,
    token: str,
    data_dir: str,
    advertise: str,
    engine: Engine,
    blob_url: str | None = None,
    ttl_s: float = DEFAULT_TTL_S,
) -> Starlette:
    db = Database(database_url)
    shipper = _shipper(blob_url, engine) if blob_url else None
    agent = HostAgent(engine, shipper)
    host_id = _host_id(data_dir)
    expected = token.encode()

    async def report() -> tuple[dict[str, float], list[str]]:
        goldens = await anyio.to_thread.run_sync(engine.goldens)
        return capacity(), sorted(g.name for g in goldens)

    async def started(lease: Lease) -> None:
        await ownership.refresh(lease)
        await _clean_up(lease)

    async def renewed(lease: Lease) -> None:
        await ownership.refresh(lease)
        await _clean_up(lease)

    async def stopped() -> None:
        ownership.placed = {}

    keeper = LeaseKeeper(
        db,
        HostCard(host_id, advertise, token_hash(token)),
        LeaseCallbacks(started, renewed, stopped, report),
        ttl_s=ttl_s,
    )
    ownership = Ownership(db, keeper)

    def may_commit(vm_id: str) -> bool:
        # Live for the manifest's put too: past the lease's own safety margin.
        later = time.monotonic() + COMMIT_MARGIN_S
        return may_act(keeper.current(), ownership.placed.get(vm_id), later)

    agent.may_commit = may_commit

    async def _clean_up(lease: Lease) -> None:
        """Delete here what is not placed here under this fence (taken over)."""
        local = await anyio.to_thread.run_sync(engine.vm_ids)
        for vm_id in local:
            if may_act(lease, ownership.placed.get(vm_id)):
                continue
            async with db.session() as s:
                row = await s.get(Placement, vm_id)
            if row is not None and row.host_id == lease.host_id and row.fence == lease.fence:
                continue  # placed since the refresh
            log.warning("vm %s is not placed on this host any more: deleting it here", vm_id)
            with contextlib.suppress(ArkerError):
                await anyio.to_thread.run_sync(engine.delete, vm_id)

    async def guard(method: str, kwargs: dict[str, Any], headers: Headers) -> None:
        given = (headers.get("authorization") or "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, expected):
            raise ArkerError(ErrorCode.UNAUTHORIZED, "a host token is required")
        lease = keeper.current()
        if lease is None:
            raise ArkerError(ErrorCode.UNAVAILABLE, "this host does not hold its lease")
        fence = headers.get(FENCE_HEADER)
        if fence is not None and fence != str(lease.fence):
            raise ArkerError(ErrorCode.CONFLICT, f"fence {fence} is not this host's")
        vm_id = kwargs.get("vm_id")
        if isinstance(vm_id, str):
            await ownership.check(vm_id)
        source = kwargs.get("source")
        golden = isinstance(source, str) and await anyio.to_thread.run_sync(
            agent.has_golden, source
        )
        if method == "fork" and isinstance(source, str) and not golden:
            await ownership.check(source, unplaced_ok=True)  # a VM, or a golden to fetch

    async def health(_: Request) -> Response:
        lease = keeper.current()
        body = {"host_id": host_id, "fence": lease.fence if lease else None, "leased": bool(lease)}
        return JSONResponse(body, status_code=200 if lease else 503)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await db.migrate()
        await anyio.to_thread.run_sync(engine.open)
        try:
            await keeper.start()
            yield
        finally:
            await keeper.stop()
            await anyio.to_thread.run_sync(engine.close)
            await db.close()

    spool = os.path.join(data_dir, "spool")
    os.makedirs(spool, exist_ok=True)
    routes: list[Any] = [Route("/health", health), *host_routes(agent, guard, spool)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.keeper = keeper
    app.state.host_id = host_id
    return app


def _host_id(data_dir: str) -> str:
    """This machine's id, kept in its data directory across restarts."""
    path = Path(data_dir) / "host-id"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    host_id = "h_" + str(ULID()).lower()
    path.write_text(host_id + "\n")
    return host_id


def _shipper(blob_url: str, engine: Engine) -> Any:
    from arker.cluster.blobs import BlobStore  # type: ignore[import-not-found,unused-ignore]
    from arker.cluster.checkpoints import Shipper  # type: ignore[import-not-found,unused-ignore]

    return Shipper(BlobStore.from_url(blob_url), engine)
