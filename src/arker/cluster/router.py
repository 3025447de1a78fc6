"""`ClusterEngine`: the engine of an API replica, routing each VM's calls to
the host agent that holds it (placement in PostgreSQL).

Every `Engine` method whose first parameter is `vm_id` is routed the same
way, built from the table of methods.py (no method is written twice): the
VM's placement names its host; a host whose lease has expired, or that
was acquired again since (a newer fence), no longer has it. Then a durable
VM is being taken over (unavailable, retried by the SDK; takeover.py) and
any other VM is lost (410 vm_lost): nothing is silently replaced.

The methods that are not a VM's: forks (of a VM: on its host, since a
snapshot is local; of a golden: on the live host with the most free memory,
then CPU), deletes, goldens, and the engine-wide questions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio.from_thread
from sqlalchemy import delete, insert, select

from arker.cluster.codec import to_wire
from arker.cluster.leases import db_now
from arker.cluster.methods import Method
from arker.cluster.remote import METHODS, RemoteEngineBase, connect
from arker.engine.base import Engine, GoldenInfo, Limits, NetworkPolicy, Progress, RunMoved
from arker.errors import ArkerError, ErrorCode
from arker.server.store import ClusterHost, Database, Placement, Vm

__all__ = ["ClusterEngine"]

log = logging.getLogger("arker.cluster")

HOSTS_TTL_S = 0.2  # how stale this replica's view of the hosts' leases may be
PLACEMENT_TTL_S = 2.0
MOVE_POLL_S = 0.1


class _Hosts:
    """The hosts' rows, read at most every HOSTS_TTL_S, and a client per host."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.rows: dict[str, ClusterHost] = {}
        self.now = 0.0  # the database's clock at the read
        self.read_at = -1e9
        self.clients: dict[str, RemoteEngineBase] = {}

    def client(self, host: ClusterHost) -> RemoteEngineBase:
        c = self.clients.get(host.id)
        if c is None or c.url != host.url.rstrip("/"):
            c = self.clients[host.id] = connect(host.url, self.token)
        return c

    def live(self, host_id: str, fence: int | None = None) -> bool:
        row = self.rows.get(host_id)
        if row is None or row.lease_expires_at <= self.now + (time.monotonic() - self.read_at):
            return False
        return fence is None or row.fence == fence


class ClusterEngine(Engine):
    kind = "cluster"
    supports_checkpoints = True

    def __init__(self, host_token: str, blob_store: bool = False) -> None:
        self.db: Database | None = None
        self.hosts = _Hosts(host_token)
        # With a blob store, any host fetches a published golden on first use;
        # without one, only the hosts holding a golden can fork it.
        self.blob_store = blob_store
        self._placed: dict[str, tuple[Placement, float]] = {}

    # -- bound to the replica's database at its start (app.py)
    def bind(self, db: Database) -> None:
        self.db = db

    def open(self) -> None:
        return None

    def close(self) -> None:
        for client in self.hosts.clients.values():
            client.close()

    # -- the database, from a worker thread
    def _db(self, fn: Any, *args: Any) -> Any:
        if self.db is None:
            raise ArkerError(ErrorCode.UNAVAILABLE, "the cluster engine is not started")
        try:
            return anyio.from_thread.run(fn, *args)
        except RuntimeError as exc:  # on the event loop (read_output): no wait there
            raise ArkerError(ErrorCode.UNAVAILABLE, "placement not known here yet") from exc

    async def refresh_hosts(self) -> None:
        assert self.db is not None
        async with self.db.session() as s:
            now = await s.scalar(select(db_now()))
            rows = list(await s.scalars(select(ClusterHost)))
        self.hosts.rows = {r.id: r for r in rows}
        self.hosts.now, self.hosts.read_at = float(now or 0), time.monotonic()

    def _fresh_hosts(self) -> _Hosts:
        # On the event loop (read_output, for a live stream) the view is as
        # fresh as the last read: the loop cannot wait for the database.
        if time.monotonic() - self.hosts.read_at > HOSTS_TTL_S and not _on_loop():
            self._db(self.refresh_hosts)
        return self.hosts

    async def _placement_row(self, vm_id: str) -> Placement | None:
        assert self.db is not None
        async with self.db.session() as s:
            row: Placement | None = await s.get(Placement, vm_id)
            return row

    def placement(self, vm_id: str, fresh: bool = False) -> Placement | None:
        hit = self._placed.get(vm_id)
        if hit is not None and not fresh and hit[1] > time.monotonic():
            return hit[0]
        row: Placement | None = self._db(self._placement_row, vm_id)
        if row is None:
            self._placed.pop(vm_id, None)
        else:
            self._placed[vm_id] = (row, time.monotonic() + PLACEMENT_TTL_S)
        return row

    def host_id_of(self, vm_id: str) -> str | None:
        """The VM's host as last read (no I/O: called on the event loop)."""
        hit = self._placed.get(vm_id)
        return hit[0].host_id if hit is not None else None

    async def _durable(self, vm_id: str) -> bool:
        assert self.db is not None
        async with self.db.session() as s:
            return bool(await s.scalar(select(Vm.durable).where(Vm.id == vm_id)))

    # -- routing
    def host_of(self, vm_id: str) -> tuple[RemoteEngineBase, Placement]:
        """The client of the host holding `vm_id`, or why there is none."""
        row = self.placement(vm_id)
        hosts = self._fresh_hosts()
        if row is not None and not hosts.live(row.host_id, row.fence):
            row = self.placement(vm_id, fresh=True)  # moved since it was cached?
            hosts = self._fresh_hosts()
        if row is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"vm {vm_id!r} is on no host")
        if not hosts.live(row.host_id, row.fence):
            if self._db(self._durable, vm_id):
                raise ArkerError(
                    ErrorCode.UNAVAILABLE, f"vm {vm_id!r} is moving to a healthy host", 503
                )
            raise ArkerError(ErrorCode.VM_LOST, f"vm {vm_id!r} is lost: its host is gone")
        client = hosts.client(hosts.rows[row.host_id])
        client.transport.fence = row.fence
        return client, row

    def _routed(self, name: str, vm_id: str, *args: Any, **kwargs: Any) -> Any:
        client, row = self.host_of(vm_id)
        try:
            return getattr(client, name)(vm_id, *args, **kwargs)
        except ArkerError as exc:
            if exc.code != ErrorCode.CONFLICT or "placed" not in exc.message:
                if name == "wait_run" and exc.status in (0, 503):
                    return self._wait_moved(vm_id, row, exc)
                raise
        client, _ = self.host_of(vm_id)  # placed elsewhere since: once more there
        self._placed.pop(vm_id, None)
        return getattr(client, name)(vm_id, *args, **kwargs)

    def _wait_moved(self, vm_id: str, row: Placement, exc: ArkerError) -> Any:
        """A wait whose host went away: a durable VM's run is started again
        elsewhere (RunMoved once its placement has changed); any other VM's
        run is lost with it."""
        while True:
            if not self._db(self._durable, vm_id):
                raise ArkerError(ErrorCode.VM_LOST, f"vm {vm_id!r} is lost: {exc.message}")
            now = self.placement(vm_id, fresh=True)
            if now is None or (now.host_id, now.fence) != (row.host_id, row.fence):
                raise RunMoved(vm_id)
            time.sleep(MOVE_POLL_S)

    # -- the methods that are not one VM's
    def goldens(self) -> list[GoldenInfo]:
        hosts = self._fresh_hosts()
        found: dict[str, GoldenInfo] = {}
        for host_id, row in hosts.rows.items():
            if hosts.live(host_id):
                try:
                    infos = hosts.client(row).goldens()
                except ArkerError:
                    continue
                for info in infos:
                    found.setdefault(info.name, info)
        return sorted(found.values(), key=lambda g: g.name)

    def _roomiest(self, golden: str | None = None) -> ClusterHost:
        hosts = self._fresh_hosts()
        live = [r for r in hosts.rows.values() if hosts.live(r.id)]
        if golden is not None:
            holding = [r for r in live if golden in (r.goldens or [])]
            if not holding:
                raise ArkerError(
                    ErrorCode.NOT_FOUND, f"no host holds or can fetch golden {golden!r}"
                )
            if not self.blob_store:
                live = holding
        if not live:
            raise ArkerError(ErrorCode.UNAVAILABLE, "no host of the cluster is live", 503)

        def room(r: ClusterHost) -> tuple[float, float]:
            cap = r.capacity or {}
            return (float(cap.get("memory_free_bytes", 0)), float(cap.get("cpu_free", 0)))

        return max(live, key=room)

    def build_golden(self, name: str, progress: Progress | None = None) -> GoldenInfo:
        row = self._roomiest()
        info = self.hosts.client(row).build_golden(name)
        self._db(self._note_golden, row.id, name)  # see publish_golden
        return info

    def import_golden(
        self,
        name: str,
        tarball: str,
        progress: Progress | None = None,
        *,
        description: str | None = None,
        require_shell: bool = False,
    ) -> GoldenInfo:
        # The tarball is a path on this machine; the remote engine sends its file.
        row = self._roomiest()
        info = self.hosts.client(row).import_golden(
            name, tarball, description=description, require_shell=require_shell
        )
        self._db(self._note_golden, row.id, name)  # see publish_golden
        return info

    def publish_golden(self, vm_id: str, name: str, description: str | None = None) -> GoldenInfo:
        # On the VM's host, whose agent ships it to the blob store (when it
        # has one) for the other hosts to fetch on first fork.
        client, row = self.host_of(vm_id)
        info = client.publish_golden(vm_id, name, description)
        # Forks look for a host holding the golden in the hosts' rows, which
        # each host rewrites at its next renewal (about a second): note it now,
        # so a fork just after the publish finds it.
        self._db(self._note_golden, row.host_id, name)
        return info

    async def _note_golden(self, host_id: str, name: str) -> None:
        assert self.db is not None
        async with self.db.session() as s:
            host = await s.get(ClusterHost, host_id)
            if host is not None and name not in (host.goldens or []):
                host.goldens = sorted([*(host.goldens or []), name])
                await s.commit()
        self.hosts.read_at = -1e9  # the next look reads the rows again

    def delete_golden(self, name: str) -> None:
        hosts = self._fresh_hosts()
        for host_id, row in hosts.rows.items():
            if hosts.live(host_id):
                hosts.client(row).delete_golden(name)

    def fork(
        self,
        source: str,
        vm_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> None:
        parent = self.placement(source)
        if parent is not None:
            client, parent = self.host_of(source)
            host_id, fence = parent.host_id, parent.fence
        else:
            host = self._roomiest(golden=source)
            client, host_id, fence = self.hosts.client(host), host.id, host.fence
        spec = {
            "hostname": hostname,
            "limits": to_wire(limits, Limits | None),
            "network": to_wire(network, NetworkPolicy | None),
        }
        self._db(self._place, vm_id, host_id, fence, spec)
        try:
            client.transport.fence = fence
            client.fork(source, vm_id, hostname=hostname, limits=limits, network=network)
        except BaseException:
            self._db(self._unplace, vm_id)
            raise

    async def _place(self, vm_id: str, host_id: str, fence: int, spec: dict[str, Any]) -> None:
        assert self.db is not None
        values = {"vm_id": vm_id, "host_id": host_id, "fence": fence, "spec": spec}
        await self.db.write(insert(Placement), {**values, "placed_at": time.time()})

    async def _unplace(self, vm_id: str) -> None:
        assert self.db is not None
        await self.db.write(delete(Placement).where(Placement.vm_id == vm_id), {})
        self._placed.pop(vm_id, None)

    def delete(self, vm_id: str) -> None:
        try:
            client, _ = self.host_of(vm_id)
            client.delete(vm_id)
        except ArkerError as exc:
            if exc.code not in (ErrorCode.NOT_FOUND, ErrorCode.VM_LOST, ErrorCode.UNAVAILABLE):
                raise
            # The host is gone: it deletes its copy when it comes back (host.py).
        self._db(self._unplace, vm_id)

    async def _all_placed(self) -> list[str]:
        assert self.db is not None
        async with self.db.session() as s:
            return list(await s.scalars(select(Placement.vm_id)))

    def vm_ids(self) -> list[str]:
        ids: list[str] = self._db(self._all_placed)
        return ids

    def check_storage(self) -> None:
        return None  # each host checks its own pool on each fork and run

    def disk_usage(self, vm_id: str) -> tuple[int, str] | None:
        return None  # the file is on the host

    def storage_delete_pending(self) -> int:
        return 0


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _routed_method(m: Method) -> Any:
    def call(self: ClusterEngine, *args: Any, **kwargs: Any) -> Any:
        bound = m.signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        vm_id = arguments.pop("vm_id")
        return self._routed(m.name, vm_id, **arguments)

    call.__name__ = call.__qualname__ = m.name
    call.__signature__ = m.signature  # type: ignore[attr-defined]
    return call


def _vm_methods() -> dict[str, Any]:
    own = {n for n, v in vars(ClusterEngine).items() if callable(v)}
    return {
        name: _routed_method(m)
        for name, m in METHODS.items()
        if name not in own and list(m.signature.parameters)[1:2] == ["vm_id"]
    }


for _name, _fn in _vm_methods().items():
    setattr(ClusterEngine, _name, _fn)
ClusterEngine.__abstractmethods__ = frozenset()
