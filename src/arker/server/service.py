"""The service layer: every rule of the API lives here (org isolation, lineage,
idempotency, limits, states). Routes only parse and serialise; the engine only
acts on the host. Run lifecycle rules are in `runs.py`, part of this layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError
from sqlalchemy import ColumnElement, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from ulid import ULID

from arker import _types as t
from arker._paths import check_path
from arker.engine.base import Engine, GoldenInfo, Limits, NetworkPolicy, VmPower
from arker.engine.egress.policy import AllowEntryError, parse_allow
from arker.errors import ArkerError, ErrorCode
from arker.server import sizes, uploads, wire
from arker.server.batches import Batcher
from arker.server.config import Settings
from arker.server.fs import Fs
from arker.server.goldens import Goldens, is_internal
from arker.server.lifecycle import Lifecycle, powers
from arker.server.metrics import Metrics
from arker.server.operations import Operations
from arker.server.port_tokens import PortTokens
from arker.server.retention import Retention
from arker.server.run_control import RunControl, Window
from arker.server.runs import Runs
from arker.server.runspec import request_hash
from arker.server.sizes import host_memory_bytes
from arker.server.store import Database, Upload, Vm
from arker.server.store import Run as RunRow
from arker.server.threads import Threads

if TYPE_CHECKING:
    from arker.engine.pty import Pty

__all__ = ["Service"]

log = logging.getLogger("arker.server")

GOLDENS_TTL_S = 5.0
MAX_OFFSET = 2**62
VM_CACHE_S = 2.0
MIB = 1024 * 1024
MAX_LABEL_FILTERS = 64
VM_STATES = ("running", "stopped", "lost")


def checked_network(egress: bool, allow: list[str] | None) -> NetworkPolicy:
    """The policy a request asks for, its allow-list checked and normalised
    (names lowercased, CIDRs in canonical form); 422 naming the bad entry."""
    if allow is None:
        return NetworkPolicy(egress=egress)
    if not allow:
        raise ArkerError(
            ErrorCode.INVALID_REQUEST,
            "network.allow: give at least one entry, or null for the internet "
            "(egress false: nothing)",
            422,
        )
    try:
        domains, cidrs = parse_allow(allow)
    except AllowEntryError as exc:
        raise ArkerError(ErrorCode.INVALID_REQUEST, str(exc), 422) from exc
    return NetworkPolicy(egress=egress, allow=domains + tuple(str(c) for c in cidrs))


def label_filter(text: str) -> tuple[str, str]:
    """`key=value` of `GET /v1/vms?label=`, checked by the rules a fork's
    labels follow (a filter no label could match is a mistake); 422 otherwise."""
    key, sep, value = text.partition("=")
    if sep:
        try:
            t.ForkRequest(labels={key: value})
        except ValidationError:
            sep = ""
    if not sep:
        raise ArkerError(
            ErrorCode.INVALID_REQUEST,
            f"label: {text[:80]!r} is not key=value with a valid label key and value",
            422,
            details={"field": "label"},
        )
    return key, value


_INSERT_VM = insert(Vm)  # built once, as the run path's statements are
_MARK_DELETED = (
    update(Vm)
    .where(Vm.id.in_(bindparam("deleted_ids", expanding=True)))
    .values(deleted_at=bindparam("deleted_at"))
)
_DROP_RUNS = delete(RunRow).where(RunRow.vm_id.in_(bindparam("dropped_ids", expanding=True)))
_DROP_UPLOADS = delete(Upload).where(Upload.vm_id.in_(bindparam("dropped_ids", expanding=True)))


class Service:
    def __init__(self, settings: Settings, db: Database, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.db = db
        self.engine = engine
        self.metrics = metrics
        self.threads = Threads(settings.engine_threads)
        self.runs = Runs(settings, db, engine, self.threads, metrics)
        self.run_control = RunControl(self.runs)
        self.retention = Retention(db, settings.run_retention_s)
        self.lifecycle = Lifecycle(
            db,
            engine,
            self.threads,
            metrics,
            self.runs,
            settings.lifecycle_interval_s,
            self._forget_vm,
        )
        self.port_tokens = PortTokens(settings.data_dir)
        self._goldens: tuple[float, dict[str, GoldenInfo]] = (0.0, {})
        # VM rows change only when deleted (here) or marked lost (at start), so
        # every VM call may skip its lookup for a moment; see `_vm`.
        self._vms: dict[tuple[str, str], tuple[Vm, float]] = {}
        # Admission: forks admitted but not yet in the database, by org; the
        # lock makes each check-and-reserve one step, so concurrent forks
        # cannot all pass on the same count.
        self._admit_lock = asyncio.Lock()
        self._pending: dict[str, list[int]] = {}  # the memory limits they asked for
        # vm_id -> (org, memory limit in bytes) of every live VM (neither
        # deleted nor lost), for admission: read once at start, then kept by
        # fork and delete, the only writers of a VM's liveness (a query per
        # fork cost 2 ms).
        self._live: dict[str, tuple[str, int]] = {}
        self._host_memory = settings.host_memory_bytes or host_memory_bytes()
        self._deletes: Batcher[str] = Batcher(self._record_deletes)
        self.fs = Fs(settings, engine, self.threads, self._usable_vm)
        self.operations = Operations(db)
        self.golden_api = Goldens(
            settings, db, engine, self.threads, self.operations, self.goldens, self._usable_vm
        )

    # -- lifecycle
    async def start(self) -> None:
        self.runs.wakeups.bind(asyncio.get_running_loop())
        await self.threads.call(self.port_tokens.open)
        await self.threads.call(self.engine.open)
        bind = getattr(self.engine, "bind", None)
        if bind is not None:
            bind(self.db)  # a cluster's router reads placements from this database
        try:
            if not self.settings.cluster:
                # In a cluster, a VM is lost with its host and runs resume on
                # takeover (cluster/takeover.py), never at a replica's start.
                await self._mark_lost()
                await self.runs.recover()
                await self.operations.recover()
                await self.golden_api.recover()
            self.retention.start()
            await self.lifecycle.watch_running()
            self.lifecycle.start()
        except BaseException:
            # A failed start must not leave the engine's mounts and processes.
            await self.threads.call(self.engine.close)
            raise

    async def stop(self) -> None:
        await self.lifecycle.stop()
        await self.operations.stop()
        await self.retention.stop()
        await self._deletes.drain()
        await self.runs.stop()
        await self.threads.call(self.engine.close)

    async def _mark_lost(self) -> None:
        """A VM the engine no longer has (its storage is gone) is lost."""
        present = set(await self.threads.call(self.engine.vm_ids))
        async with self.db.session() as s:
            rows = (
                await s.scalars(select(Vm).where(Vm.deleted_at.is_(None), Vm.lost.is_(False)))
            ).all()
            for row in rows:
                if row.id not in present:
                    log.warning("vm %s is missing from the engine: marking it lost", row.id)
                    row.lost = True
            await s.commit()
            # Deleted, but its storage still here: the sweep marks an expired
            # VM deleted before the engine deletes it, and may have died between.
            ids = sorted(present)
            leftover = [
                vm_id
                for start in range(0, len(ids), 500)
                for vm_id in await s.scalars(
                    select(Vm.id).where(
                        Vm.id.in_(ids[start : start + 500]), Vm.deleted_at.is_not(None)
                    )
                )
            ]
        for vm_id in leftover:
            log.warning("vm %s was deleted but its storage is here: freeing it", vm_id)
            await self.threads.call(self.engine.delete, vm_id)
        self._vms.clear()
        self._live = {row.id: (row.org, sizes.memory_bytes(row)) for row in rows if not row.lost}

    # -- activity (see lifecycle.py)
    def touch(self, vm_id: str) -> None:
        """The VM is in use now: its idle time starts again. Every call that
        uses a VM (runs, files, ports) makes one; it does no I/O."""
        self.lifecycle.activity.touch(vm_id)

    def hold(self, vm_id: str) -> AbstractAsyncContextManager[None]:
        """`async with service.hold(vm_id):` the VM is busy (never stopped as
        idle) while this is held: streams, terminals and relays wrap themselves
        in it. It counts on this server; the sweep tells the others."""
        return self.lifecycle.activity.hold(vm_id)

    def _forget_vm(self, vm_id: str, org: str) -> None:
        """The VM was deleted behind the service's back (its TTL)."""
        self._live.pop(vm_id, None)
        self._vms.pop((org, vm_id), None)

    # -- goldens
    async def goldens(self, refresh: bool = False) -> dict[str, GoldenInfo]:
        """The goldens every org sees (the engine's, less the orgs' own)."""
        fetched_at, cached = self._goldens
        if refresh or time.monotonic() - fetched_at > GOLDENS_TTL_S:
            infos = await self.threads.call(self.engine.goldens)
            cached = {g.name: g for g in infos if not is_internal(g.name)}
            self._goldens = (time.monotonic(), cached)
        return cached

    async def list_goldens(self, org: str) -> t.GoldenList:
        return await self.golden_api.list(org)

    # -- VMs
    async def _vm(self, org: str, vm_id: str) -> Vm:
        """The caller's live VM, or not_found: another org's VM is not there.
        Rows are cached for VM_CACHE_S: a delete by this server drops its entry
        at once (another replica's delete shows within that time, and the
        engine refuses the VM meanwhile). Nothing is cached for a miss, and the
        query asks for the org's row only, so another org's VM and a VM that
        never existed take the same path to the same answer."""
        now = time.monotonic()
        hit = self._vms.get((org, vm_id))
        if hit is not None and hit[1] > now:
            return hit[0]
        row = await self._live_row(org, vm_id)
        if row is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"vm {vm_id!r} not found")
        if len(self._vms) > 10_000:
            self._vms.clear()  # a crude bound: a miss costs one query
        self._vms[(org, vm_id)] = (row, now + VM_CACHE_S)
        return row

    async def _live_row(self, org: str, vm_id: str) -> Vm | None:
        """The org's undeleted VM row: one query whether the id is another
        org's, deleted, or unknown."""
        async with self.db.session() as s:
            row: Vm | None = await s.scalar(
                select(Vm).where(Vm.id == vm_id, Vm.org == org, Vm.deleted_at.is_(None))
            )
        return row

    async def _usable_vm(self, org: str, vm_id: str, action: str) -> Vm:
        row = await self._vm(org, vm_id)
        if row.lost:
            raise ArkerError(
                ErrorCode.VM_LOST, f"cannot {action} vm {vm_id!r} in state lost: its host is gone"
            )
        self.touch(vm_id)
        return row

    async def _power(self, vm_id: str) -> VmPower | None:
        try:
            return await self.threads.call(self.engine.power, vm_id)
        except ArkerError:
            return None

    def _host(self, vm_id: str) -> str | None:
        """The cluster host holding the VM, as the engine last saw it (None
        outside a cluster)."""
        host_id_of = getattr(self.engine, "host_id_of", None)
        return host_id_of(vm_id) if host_id_of is not None else None

    async def get_vm(self, org: str, vm_id: str) -> t.Vm:
        row = await self._vm(org, vm_id)
        power = None if row.lost else await self._power(vm_id)
        return wire.vm(row, self.settings.region, power, self._host(row.id))

    async def list_vms(
        self,
        org: str,
        limit: int,
        offset: int,
        labels: list[str] | None = None,
        parent_id: str | None = None,
        state: str | None = None,
    ) -> t.VmList:
        """A page of the org's VMs, newest first, narrowed by every filter
        given (labels `key=value`, all of them); `total` counts the matches."""
        if not 1 <= limit <= 1000:
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"limit must be 1..1000, not {limit}")
        if offset < 0:
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"offset must be >= 0, not {offset}")
        offset = min(offset, MAX_OFFSET)  # past any real total; keeps SQL integers in range
        where = self._list_filter(org, labels or [], parent_id, state)
        newest = (Vm.created_at.desc(), Vm.id.desc())
        async with self.db.session() as s:
            if state in ("running", "stopped"):
                # The engine knows which VMs run, not the database: filter the
                # ids, then read the page's rows.
                ids = list(await s.scalars(select(Vm.id).where(where).order_by(*newest)))
                found_powers = await self.threads.call(powers, self.engine, ids)
                running = state == "running"
                ids = [i for i in ids if (found_powers.get(i) is VmPower.RUNNING) == running]
                total = len(ids)
                page = ids[offset : offset + limit]
                by_id = {r.id: r for r in await s.scalars(select(Vm).where(Vm.id.in_(page)))}
                rows = [by_id[i] for i in page if i in by_id]
            else:
                total = await s.scalar(select(func.count()).select_from(Vm).where(where)) or 0
                rows = list(
                    await s.scalars(
                        select(Vm).where(where).order_by(*newest).limit(limit).offset(offset)
                    )
                )
                ids = [r.id for r in rows if not r.lost]
                found_powers = await self.threads.call(powers, self.engine, ids)
        items = [
            wire.vm(r, self.settings.region, found_powers.get(r.id), self._host(r.id)) for r in rows
        ]
        return t.VmList(items=items, total=total)

    @staticmethod
    def _list_filter(
        org: str, labels: list[str], parent_id: str | None, state: str | None
    ) -> ColumnElement[bool]:
        if len(labels) > MAX_LABEL_FILTERS:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                f"label: at most {MAX_LABEL_FILTERS} filters, not {len(labels)}",
                422,
                details={"field": "label"},
            )
        if state is not None and state not in VM_STATES:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                f"state: {state[:40]!r} is not one of {', '.join(VM_STATES)}",
                422,
                details={"field": "state"},
            )
        if parent_id is not None and "\x00" in parent_id:  # PostgreSQL's text holds no NUL
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                "parent_id: a NUL is in no vm id",
                422,
                details={"field": "parent_id"},
            )
        where = (Vm.org == org) & Vm.deleted_at.is_(None)
        for key, value in map(label_filter, labels):
            where &= Vm.labels[key].as_string() == value
        if parent_id is not None:
            where &= Vm.parent_id == parent_id
        if state is not None:
            where &= Vm.lost.is_(state == "lost")
        return where

    async def fork(self, org: str, source: str, req: t.ForkRequest, idem_key: str | None) -> t.Vm:
        durable = bool(req.durable)
        asked_sizes = sizes.asked(req.resources)
        fields: dict[str, object] = {"source": source, "name": req.name, "durable": durable}
        if asked_sizes:  # only when set: keys made before resources stay valid
            fields["resources"] = asked_sizes
        asked_network = None
        if req.network is not None:  # likewise
            asked_network = checked_network(req.network.egress, req.network.allow)
            fields["network"] = {"egress": asked_network.egress, "allow": req.network.allow}
        for name in ("ttl_s", "idle_stop_s", "labels"):  # likewise; null is a value here
            if name in req.model_fields_set:
                fields[name] = getattr(req, name)
        digest = request_hash(fields)
        sizes.check(asked_sizes, self.settings, self._host_memory)
        if idem_key is not None:
            found = await self._fork_replay(org, idem_key, digest)
            if found is not None:
                return found
        if durable and not self.engine.supports_checkpoints:
            raise ArkerError(
                ErrorCode.UNSUPPORTED_OPERATION,
                f"cannot fork a durable vm: the {self.engine.kind} engine has no checkpoints",
            )
        # A golden wins over a VM of the same name, as in the engine's pool;
        # a built-in one over the org's own (publishing refuses the clash).
        parent: Vm | None = None
        engine_source = source
        if source in await self.goldens():
            base_image = source
        else:
            parent = await self._live_row(org, source)
            if parent is not None:
                if parent.lost:
                    raise ArkerError(ErrorCode.VM_LOST, f"cannot fork vm {source!r} in state lost")
                base_image = parent.base_image
            elif (own := await self.golden_api.engine_name(org, source)) is not None:
                base_image, engine_source = source, own
            elif source in await self.goldens(refresh=True):
                base_image = source
            else:
                raise ArkerError(ErrorCode.NOT_FOUND, f"no golden or vm named {source!r}")

        # A fork of a VM inherits its parent's size unless the request says otherwise.
        limits = sizes.limits(asked_sizes, parent, self.settings, self.engine_default_limits())
        # And its network policy, likewise; from a golden, the server's default.
        if asked_network is not None:
            network = asked_network
        elif parent is not None:
            network = wire.stored_network(parent)
        else:
            network = NetworkPolicy(egress=self.settings.egress)
        await self.threads.call(self.engine.check_storage)
        async with self._admitted(org, limits.memory_bytes):
            return await self._fork(
                org,
                engine_source,
                req,
                idem_key,
                digest,
                durable,
                base_image,
                parent,
                limits,
                network,
            )

    async def _fork(
        self,
        org: str,
        source: str,
        req: t.ForkRequest,
        idem_key: str | None,
        digest: str,
        durable: bool,
        base_image: str,
        parent: Vm | None,
        limits: Limits,
        network: NetworkPolicy,
    ) -> t.Vm:
        vm_id = str(ULID())
        if self.settings.burst_suffix:
            vm_id = f"{vm_id}_{self.settings.burst_suffix}"
        # Sent (a number, or null for none) or the server's default; never
        # the parent's, as with labels.
        sent = req.model_fields_set
        ttl_s = req.ttl_s if "ttl_s" in sent else self.settings.default_ttl_s
        idle_stop_s = (
            req.idle_stop_s if "idle_stop_s" in sent else self.settings.default_idle_stop_s
        )
        now = time.time()
        values = {
            "id": vm_id,
            "org": org,
            "name": req.name,
            "base_image": base_image,
            "parent_id": parent.id if parent is not None else None,
            "durable": durable,
            "lost": False,
            "created_at": now,
            "idem_key": idem_key,
            "idem_hash": digest if idem_key else None,
            **sizes.row_values(limits),
            "network": wire.network_json(network),
            "expires_at": None if ttl_s is None else now + ttl_s,
            "idle_stop_s": idle_stop_s,
            "active_at": now,
            "labels": req.labels or None,
        }

        def fork_and_record() -> None:
            """The snapshot and its row in one worker-thread hop (a session on
            the loop cost ~2 ms a fork). Not recorded, so not promised: a
            failed insert frees the storage just made."""
            # The engine makes a valid hostname of any name.
            self.engine.fork(
                source, vm_id, hostname=req.name or vm_id.lower(), limits=limits, network=network
            )
            try:
                self.db.write_blocking(_INSERT_VM, values)
            except BaseException:
                self.engine.delete(vm_id)
                raise
            # Here, not after the await: a fork whose caller went away is
            # recorded all the same, and admission must count it.
            self._live[vm_id] = (org, limits.memory_bytes)
            self.metrics.forks.inc()

        try:
            await self.threads.call(fork_and_record)
        except IntegrityError:
            if idem_key is not None:  # a concurrent fork with the same key won
                found = await self._fork_replay(org, idem_key, digest)
                if found is not None:
                    return found
            raise
        row = Vm(**values)
        return wire.vm(row, self.settings.region, VmPower.STOPPED, self._host(row.id))

    @contextlib.asynccontextmanager
    async def _admitted(self, org: str, requested: int) -> AsyncIterator[None]:
        """Reserve room for one more VM of `org` with a memory limit of
        `requested` bytes, or raise quota_exceeded; the reservation lasts
        until the fork is recorded (or failed)."""
        async with self._admit_lock:
            self._check_admission(org, requested)
            self._pending.setdefault(org, []).append(requested)
        try:
            yield
        finally:
            self._pending[org].remove(requested)
            if not self._pending[org]:
                del self._pending[org]

    def _check_admission(self, org: str, requested: int) -> None:
        """The host never promises more memory than `overcommit` times its own,
        and an org stays within its quotas. Live VMs are all the VMs neither
        deleted nor lost: a stopped one starts again on its next run."""
        pending = self._pending.get(org, [])
        org_vms, org_bytes = len(pending), sum(pending)
        if self.settings.org_max_vms is not None or self.settings.org_max_memory_mib is not None:
            for o, held in self._live.values():
                if o == org:
                    org_vms, org_bytes = org_vms + 1, org_bytes + held
        limits = self.settings
        if limits.org_max_vms is not None and org_vms + 1 > limits.org_max_vms:
            raise _quota(
                f"org {org!r} has {org_vms} vms, its quota is {limits.org_max_vms}",
                limit="org_max_vms",
                max=limits.org_max_vms,
                current=org_vms,
                requested=1,
            )
        if limits.org_max_memory_mib is not None:
            current_mib = org_bytes // MIB
            if current_mib + requested // MIB > limits.org_max_memory_mib:
                raise _quota(
                    f"org {org!r} holds {current_mib} MiB of vm memory, "
                    f"its quota is {limits.org_max_memory_mib} MiB",
                    limit="org_max_memory_mib",
                    max=limits.org_max_memory_mib,
                    current=current_mib,
                    requested=requested // MIB,
                )
        host_max_mib = int(limits.overcommit * self._host_memory) // MIB
        host_mib = (
            sum(held for _, held in self._live.values())
            + sum(sum(p) for p in self._pending.values())
        ) // MIB
        if host_mib + requested // MIB > host_max_mib:
            raise _quota(
                f"this host has promised {host_mib} MiB of vm memory, "
                f"{limits.overcommit:g} times its memory is {host_max_mib} MiB",
                limit="host_memory_mib",
                max=host_max_mib,
                current=host_mib,
                requested=requested // MIB,
            )

    def lxcfs_state(self) -> Literal["running", "down"] | None:
        """The engine's LXCFS daemon (engine/lxcfs.py), for /healthz; None where
        the engine runs none (a cluster's router, an engine without lxcfs)."""
        lxcfs = getattr(self.engine, "lxcfs", None)
        if lxcfs is None or not lxcfs.available:
            return None
        return "running" if lxcfs.alive() else "down"

    def engine_default_limits(self) -> Limits:
        return getattr(self.engine, "default_limits", None) or Limits()

    async def _fork_replay(self, org: str, idem_key: str, digest: str) -> t.Vm | None:
        async with self.db.session() as s:
            row = await s.scalar(select(Vm).where(Vm.org == org, Vm.idem_key == idem_key))
        if row is None:
            return None
        if row.idem_hash != digest:
            raise ArkerError(
                ErrorCode.CONFLICT, "this Idempotency-Key was used for a different fork request"
            )
        power = None if row.lost or row.deleted_at else await self._power(row.id)
        return wire.vm(row, self.settings.region, power, self._host(row.id))

    async def delete_vm(self, org: str, vm_id: str) -> None:
        await self._vm(org, vm_id)
        self._vms.pop((org, vm_id), None)
        await self.threads.call(self.engine.delete, vm_id)
        await self._deletes.submit(vm_id)
        self._live.pop(vm_id, None)
        self._vms.pop((org, vm_id), None)  # a lookup may have cached it while we deleted
        await self.retention.give_back()

    async def _record_deletes(self, vm_ids: list[str]) -> None:
        """Mark deleted VMs deleted, in one transaction for every delete that
        came meanwhile (see `Batcher`). Their runs and uploads are answered
        not_found from now on (the VM lookup fails first, even for a retried
        Idempotency-Key), so their rows only take space: they go too."""
        in_flight = await self.runs.in_flight_count(vm_ids)
        await self.db.write_all(
            [
                (_MARK_DELETED, {"deleted_ids": vm_ids, "deleted_at": time.time()}),
                (_DROP_RUNS, {"dropped_ids": vm_ids}),
                (_DROP_UPLOADS, {"dropped_ids": vm_ids}),
            ]
        )
        self.runs.count_failed(in_flight)

    async def update_network(self, org: str, vm_id: str, req: t.NetworkUpdate) -> t.Vm:
        """A new policy for the VM, live if it runs; fields not sent keep theirs."""
        row = await self._usable_vm(org, vm_id, "change the network of")
        had = wire.stored_network(row)
        egress = had.egress if req.egress is None else req.egress
        sent = req.model_fields_set
        allow = req.allow if "allow" in sent else (None if had.allow is None else list(had.allow))
        policy = checked_network(egress, allow)
        await self.threads.call(self.engine.set_network, vm_id, policy)
        stored = wire.network_json(policy)
        async with self.db.session() as s:
            live = await s.get(Vm, row.id)
            if live is not None:
                live.network = stored
            await s.commit()
        row.network = stored
        self._vms.pop((org, vm_id), None)
        return wire.vm(row, self.settings.region, await self._power(vm_id), self._host(vm_id))

    async def update_vm(self, org: str, vm_id: str, req: t.VmUpdate) -> t.Vm:
        """A new TTL (counted from now; null: none) or idle time; fields not
        sent keep theirs. A VM past its TTL is gone, even before the sweep."""
        row = await self._vm(org, vm_id)
        now = time.time()
        values: dict[str, object] = {}
        if "ttl_s" in req.model_fields_set:
            values["expires_at"] = None if req.ttl_s is None else now + req.ttl_s
        if "idle_stop_s" in req.model_fields_set:
            values["idle_stop_s"] = req.idle_stop_s
            values["active_at"] = now  # the new idle time counts from now
            self.touch(vm_id)
        not_expired = Vm.expires_at.is_(None) | (Vm.expires_at > now)
        async with self.db.session() as s:
            if values:
                # One conditional statement: the sweep's claim of an expired VM
                # and this either both see the other's write or never meet.
                res = await s.execute(
                    update(Vm)
                    .where(Vm.id == row.id, Vm.deleted_at.is_(None), not_expired)
                    .values(**values)
                )
                await s.commit()
                found = bool(res.rowcount)  # type: ignore[attr-defined]
            else:
                found = (
                    await s.scalar(
                        select(func.count()).where(
                            Vm.id == row.id, Vm.deleted_at.is_(None), not_expired
                        )
                    )
                    == 1
                )
            fresh = await s.get(Vm, row.id, populate_existing=True) if found else None
        self._vms.pop((org, vm_id), None)
        if fresh is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"vm {vm_id!r} not found")
        power = None if fresh.lost else await self._power(vm_id)
        return wire.vm(fresh, self.settings.region, power, self._host(vm_id))

    async def restart_vm(self, org: str, vm_id: str) -> t.Vm:
        """Kill every process of the VM and start its PID 1 again; runs in
        flight end failed. Its files stay."""
        row = await self._usable_vm(org, vm_id, "restart")
        await self.threads.call(self.engine.restart, vm_id)
        await self.runs.finish_vm_runs(vm_id, "the vm was restarted")
        return wire.vm(row, self.settings.region, await self._power(vm_id), self._host(vm_id))

    # -- runs
    async def run(
        self, org: str, vm_id: str, req: t.RunRequest, idem_key: str | None
    ) -> tuple[t.CompletedRun | t.TimedOutRun | t.CancelledRun | t.FailedRun | t.StartedRun, int]:
        vm_row = await self._vm(org, vm_id)
        async with self.hold(vm_id):  # a foreground run keeps it busy to its end
            return await self.runs.run(vm_row, req, idem_key)

    async def run_status(
        self, org: str, vm_id: str, run_id: str, window: Window | None = None
    ) -> t.RunStatus:
        await self._vm(org, vm_id)
        return await self.run_control.status(org, vm_id, run_id, window)

    async def run_events(
        self, org: str, vm_id: str, run_id: str, offsets: tuple[int, int]
    ) -> AsyncIterator[bytes]:
        await self._vm(org, vm_id)
        events = await self.run_control.events(org, vm_id, run_id, offsets)

        async def held() -> AsyncIterator[bytes]:
            async with self.hold(vm_id):  # an open stream keeps the VM busy
                async for chunk in events:
                    yield chunk

        return held()

    async def write_run_stdin(
        self, org: str, vm_id: str, run_id: str, data: bytes, close: bool
    ) -> t.RunStdinWritten:
        await self._usable_vm(org, vm_id, "write to a run of")
        return await self.run_control.write_stdin(org, vm_id, run_id, data, close)

    async def signal_run(self, org: str, vm_id: str, run_id: str, name: str) -> t.RunStatus:
        await self._usable_vm(org, vm_id, "signal a run of")
        return await self.run_control.signal(org, vm_id, run_id, name)

    async def cancel_run(self, org: str, vm_id: str, run_id: str) -> t.RunStatus:
        await self._vm(org, vm_id)
        return await self.run_control.cancel(org, vm_id, run_id)

    # -- files
    async def read_file(self, org: str, vm_id: str, path: str) -> bytes:
        clean = check_path(path)
        await self._usable_vm(org, vm_id, "read a file of")
        return await self.threads.call(
            self.engine.read_file, vm_id, clean, self.settings.max_file_bytes
        )

    async def write_file(
        self,
        org: str,
        vm_id: str,
        path: str,
        body: AsyncIterator[bytes],
        upload_id: str | None,
    ) -> t.FileWritten:
        clean = check_path(path)
        await self._usable_vm(org, vm_id, "write a file of")
        if upload_id is not None:
            async with self.db.session() as s:
                done = await s.get(Upload, (org, upload_id))
            if done is not None:
                # Hashed only to tell a retry from a misuse: a fresh write gets its
                # sha256 from the engine, which hashes as it writes.
                sha = await uploads.hash_body(self.threads, body)
                if (done.vm_id, done.path, done.sha256) != (vm_id, clean, sha):
                    raise ArkerError(
                        ErrorCode.CONFLICT,
                        "this Upload-Id was used for a different file or content",
                    )
                return t.FileWritten(path=done.path, size=done.size, sha256=done.sha256)
        info = await uploads.write_body(
            self.threads, self.engine, vm_id, clean, body, self.settings.max_file_bytes
        )
        if upload_id is not None:
            try:
                async with self.db.session() as s:
                    s.add(
                        Upload(
                            org=org,
                            upload_id=upload_id,
                            vm_id=vm_id,
                            path=clean,
                            size=info.size,
                            sha256=info.sha256,
                            created_at=time.time(),
                        )
                    )
                    await s.commit()
            except IntegrityError:
                pass  # a concurrent retry recorded the same upload first
        return t.FileWritten(path=info.path, size=info.size, sha256=info.sha256)

    # -- ports
    async def connect_port(self, org: str, vm_id: str, port: int) -> socket.socket:
        """A connection to `port` inside the caller's VM (started if stopped)."""
        await self._usable_vm(org, vm_id, "reach a port of")
        return await self.threads.call(self.engine.connect_port, vm_id, port)

    # -- terminals
    async def open_pty(
        self,
        org: str,
        vm_id: str,
        *,
        user: Literal["user", "root"],
        cols: int,
        rows: int,
        command: str | None,
        term: str,
    ) -> Pty:
        """A terminal in the caller's VM (started if stopped)."""
        await self._usable_vm(org, vm_id, "open a terminal in")
        return await self.threads.call(
            self.engine.open_pty,
            vm_id,
            user=user,
            cols=cols,
            rows=rows,
            command=command,
            env={"TERM": term},
        )

    async def port_token(self, org: str, vm_id: str, port: int, ttl_s: int) -> tuple[str, float]:
        """(token, expires_at unix s) that opens `port` of the caller's VM
        without the API key, bound to this org, VM and port."""
        await self._usable_vm(org, vm_id, "open a port of")
        return self.port_tokens.issue(org, vm_id, port, ttl_s)

    def port_token_org(self, token: str, vm_id: str, port: int) -> tuple[str, float]:
        """(org, expires_at) of a valid token for this VM and port. Anything
        else, stale or forged or made for another VM or port, answers as a VM
        that is not there, so a token cannot be used to probe for VMs."""
        found = self.port_tokens.verify(token, vm_id, port)
        if found is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"vm {vm_id!r} not found")
        return found

    # -- operations
    async def vms_running(self) -> int:
        ids = await self.threads.call(self.engine.vm_ids)
        found = await self.threads.call(powers, self.engine, ids)
        return sum(1 for p in found.values() if p is VmPower.RUNNING)


def _quota(message: str, **details: object) -> ArkerError:
    return ArkerError(ErrorCode.QUOTA_EXCEEDED, message, details=details)
