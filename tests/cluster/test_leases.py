"""Leases and the fencing rule on a real PostgreSQL: each acquisition takes a
new fence, a renewal by an old fence or after expiry is refused, `may_act`
holds only for the current fence while the lease is live, and two replicas
claiming the same expired host's VMs at once take each exactly once, and
replicas racing to adopt a dead replica's runs take each run once."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import insert, select, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from pg import PG_URL, fresh_pg_database

from arker.cluster.leases import (
    HostCard,
    Lease,
    LeaseCallbacks,
    LeaseKeeper,
    acquire,
    may_act,
    renew,
)
from arker.cluster.replica import ReplicaLease, take_orphans
from arker.cluster.takeover import claim
from arker.server.store import ClusterHost, ClusterReplica, Database, Placement, Run, Vm

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not PG_URL, reason="ARKER_TEST_POSTGRES_URL is not set")


async def _race(
    db: Database,
    call: Callable[[Database, str], Awaitable[T]],
    rounds: int,
    ids: tuple[str, str] = ("r-one", "r-two"),
) -> list[T]:
    """`call` from two replicas at once (each its own connections, its own
    id), `rounds` times each; all their results."""
    other = Database(db.url)
    try:
        pairs = [(db, ids[0]), (other, ids[1])] * rounds
        return list(await asyncio.gather(*(call(d, me) for d, me in pairs)))
    finally:
        await other.close()


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    assert PG_URL
    async with fresh_pg_database(PG_URL) as url:
        database = Database(url)
        await database.migrate()
        try:
            yield database
        finally:
            await database.close()


async def test_each_acquisition_takes_a_new_fence_and_old_fences_are_refused(db: Database) -> None:
    first = await acquire(db, HostCard("h1", "http://h1", "x" * 64), ttl_s=5)
    assert first.fence == 1 and first.live()
    renewed = await renew(db, first, ttl_s=5, capacity={"memory_free_bytes": 1.0}, goldens=["g"])
    assert renewed is not None and renewed.fence == 1
    again = await acquire(db, HostCard("h1", "http://h1", "x" * 64), ttl_s=5)  # restarted, or back
    assert again.fence == 2
    assert await renew(db, first, ttl_s=5) is None  # the old life is refused by its fence
    assert await renew(db, again, ttl_s=5) is not None
    async with db.session() as s:
        row = await s.get(ClusterHost, "h1")
        assert row is not None and row.fence == 2 and row.goldens == ["g"]


async def test_a_host_restarted_within_its_ttl_resumes_its_fence(db: Database) -> None:
    first = await acquire(db, HostCard("h1", "http://h1", "x" * 64), ttl_s=5)
    # The same machine's agent started again while its lease is live: same fence.
    again = await acquire(db, HostCard("h1", "http://h1", "x" * 64), ttl_s=5, resume=True)
    assert again.fence == first.fence and again.live()
    assert await renew(db, first, ttl_s=5) is not None  # the placements under it still hold
    # Another machine with the same id (another URL), or another token: a new fence.
    elsewhere = await acquire(db, HostCard("h1", "http://other", "x" * 64), ttl_s=5, resume=True)
    assert elsewhere.fence == first.fence + 1
    assert await renew(db, first, ttl_s=5) is None
    rekeyed = await acquire(db, HostCard("h1", "http://other", "y" * 64), ttl_s=5, resume=True)
    assert rekeyed.fence == elsewhere.fence + 1
    # Back after its lease expired: a new fence, so what was placed under the old
    # one is taken over (takeover.py), however it resumes.
    short = await acquire(db, HostCard("h2", "http://h2", "x" * 64), ttl_s=0.5)
    await asyncio.sleep(0.7)
    late = await acquire(db, HostCard("h2", "http://h2", "x" * 64), ttl_s=5, resume=True)
    assert late.fence == short.fence + 1


async def test_an_expired_lease_is_not_renewed(db: Database) -> None:
    lease = await acquire(db, HostCard("h2", "http://h2", "x" * 64), ttl_s=1.2)
    await asyncio.sleep(1.4)
    assert not lease.live()  # the host stopped acting before the database expired it
    assert await renew(db, lease, ttl_s=5) is None


def test_the_fencing_rule() -> None:
    now = time.monotonic()
    lease = Lease("h1", 3, now + 2)
    assert may_act(lease, ("h1", 3), now)
    assert not may_act(lease, ("h1", 2), now)  # placed under an earlier life: taken over
    assert not may_act(lease, ("h2", 3), now)  # another host's
    assert not may_act(lease, None, now)  # no VM of the cluster
    assert not may_act(lease, ("h1", 3), now + 3)  # the lease ran out
    assert not may_act(None, ("h1", 3), now)


async def test_the_keeper_renews_and_says_when_it_lost_the_lease(db: Database) -> None:
    events: list[str] = []

    async def started(lease: Lease) -> None:
        events.append(f"started {lease.fence}")

    async def renewed(lease: Lease) -> None:
        events.append("renewed")

    async def stopped() -> None:
        events.append("stopped")

    async def report() -> tuple[dict[str, float], list[str]]:
        return {"memory_free_bytes": 5.0}, []

    callbacks = LeaseCallbacks(started, renewed, stopped, report)
    keeper = LeaseKeeper(db, HostCard("h3", "http://h3", "x" * 64), callbacks, ttl_s=3, every_s=0.1)
    await keeper.start()
    try:
        await asyncio.sleep(0.5)
        assert keeper.current() is not None and "renewed" in events
        await acquire(db, HostCard("h3", "http://h3", "x" * 64))  # someone else took the row
        await asyncio.sleep(0.5)
        assert "stopped" in events
        assert events[-1] in ("started 3", "renewed")  # and it acquired again, fence 3
        assert keeper.lease is not None and keeper.lease.fence == 3
    finally:
        await keeper.stop()


async def test_two_replicas_racing_take_each_vm_over_exactly_once(db: Database) -> None:
    dead = await acquire(db, HostCard("dead", "http://dead", "x" * 64), ttl_s=1)
    await acquire(db, HostCard("alive", "http://alive", "x" * 64), ttl_s=60)
    vm_rows = []
    placements = []
    for i in range(30):
        vm_id = f"vm{i:02d}"
        durable = i % 3 != 0
        vm_rows.append(
            {"id": vm_id, "org": "o", "base_image": "busybox", "durable": durable,
             "lost": False, "created_at": 0.0}
        )  # fmt: skip
        placements.append(
            {"vm_id": vm_id, "host_id": "dead", "fence": dead.fence, "spec": {}, "placed_at": 0.0}
        )
    async with db.engine.begin() as conn:
        await conn.execute(insert(Vm), vm_rows)
        await conn.execute(insert(Placement), placements)
    assert await claim(db) == ([], [])  # the lease is still live: nothing to take
    await asyncio.sleep(1.1)
    results = await _race(db, lambda d, _me: claim(d), 10)
    moved = [m.vm_id for r in results for m in r[0]]
    lost = [vm_id for r in results for vm_id, _ in r[1]]
    assert sorted(moved) == sorted(v["id"] for v in vm_rows if v["durable"])
    assert sorted(lost) == sorted(v["id"] for v in vm_rows if not v["durable"])
    assert len(set(moved)) == len(moved) and len(set(lost)) == len(lost)
    async with db.session() as s:
        hosts = set(
            await s.scalars(
                select(Placement.host_id).join(Vm, Vm.id == Placement.vm_id).where(Vm.durable)
            )
        )
        assert hosts == {"alive"}
        assert set(await s.scalars(select(Vm.id).where(Vm.lost))) == set(lost)
    assert await claim(db) == ([], [])  # and nothing is left to take
    # A host acquired again (a newer fence) has its old placements taken too.
    async with db.engine.begin() as conn:
        await conn.execute(update(Placement).values(host_id="alive", fence=1))
        await conn.execute(update(Vm).values(lost=False))
    await acquire(db, HostCard("alive", "http://alive", "x" * 64), ttl_s=60)  # fence 2 now
    moved_again, lost_again = [], []
    while True:  # BATCH rows a pass
        m, lo = await claim(db)
        if not m and not lo:
            break
        moved_again += m
        lost_again += lo
    assert len(lost_again) == 10
    # The only healthy host is that one: its new life adopts them (from S3).
    assert len(moved_again) == 20 and {m.host_id for m in moved_again} == {"alive"}
    async with db.session() as s:
        assert set(
            await s.scalars(
                select(Placement.fence).join(Vm, Vm.id == Placement.vm_id).where(Vm.durable)
            )
        ) == {2}


async def test_replicas_racing_adopt_a_dead_replicas_runs_exactly_once(db: Database) -> None:
    dead = ReplicaLease(db, runs=None, ttl_s=1)  # type: ignore[arg-type]
    alive = ReplicaLease(db, runs=None, ttl_s=60)  # type: ignore[arg-type]
    await dead.renew()
    await alive.renew()
    rows = [
        {"id": f"run{i:02d}", "vm_id": "vm", "org": "o", "background": True, "spec": "{}",
         "request_hash": "h", "created_at": 0.0, "state": state, "driver": driver}
        for i, (state, driver) in enumerate(
            [("running", dead.id)] * 12 + [("completed", dead.id)] * 3
            + [("running", alive.id)] * 4 + [("running", None)] * 2
        )
    ]  # fmt: skip
    async with db.engine.begin() as conn:
        await conn.execute(insert(Run), rows)
    assert await take_orphans(db, alive.id) == []  # its lease is still live: nothing to take
    await asyncio.sleep(1.1)
    results = await _race(db, take_orphans, 5, (alive.id, "r-third"))
    taken = [run_id for r in results for run_id in r]
    assert sorted(taken) == [f"run{i:02d}" for i in range(12)]  # each in-flight one, once
    async with db.session() as s:
        drivers = {k: v for k, v in (await s.execute(select(Run.id, Run.driver))).all()}
    assert {drivers[r] for r in taken} <= {alive.id, "r-third"}
    assert all(drivers[f"run{i:02d}"] == dead.id for i in range(12, 15))  # ended: left alone
    assert drivers["run19"] is None and drivers["run20"] is None  # outside a cluster
    # Given up on stop: its lease lapses at once, and a long-dead row with no
    # run in flight is dropped.
    await alive.stop()
    assert sorted(await take_orphans(db, "r-fourth")) == sorted(
        r for r in drivers if drivers[r] == alive.id and int(r[3:]) < 19
    )
    async with db.engine.begin() as conn:
        await conn.execute(update(ClusterReplica).values(lease_expires_at=0.0))
        await conn.execute(update(Run).values(state="completed"))
    await take_orphans(db, "r-fourth")
    async with db.session() as s:
        assert list(await s.scalars(select(ClusterReplica.id))) == []


async def test_a_takeover_whose_replica_died_before_restoring_is_taken_again(db: Database) -> None:
    """A replica claims a dead host's durable VMs and dies before restoring
    them: once its lease lapses, another replica takes each restore, once."""
    dead_host = await acquire(db, HostCard("gone", "http://gone", "x" * 64), ttl_s=0.5)
    await acquire(db, HostCard("fine", "http://fine", "x" * 64), ttl_s=60)
    claimer = ReplicaLease(db, runs=None, ttl_s=3)  # type: ignore[arg-type]
    await claimer.renew()
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(Vm),
            [{"id": f"d{i}", "org": "o", "base_image": "busybox", "durable": True,
              "lost": False, "created_at": 0.0} for i in range(6)],
        )  # fmt: skip
        await conn.execute(
            insert(Placement),
            [{"vm_id": f"d{i}", "host_id": "gone", "fence": dead_host.fence, "spec": {},
              "placed_at": 0.0} for i in range(6)],
        )  # fmt: skip
    await asyncio.sleep(0.6)
    moved, _ = await claim(db, claimer.id)  # and then the claimer dies, restoring nothing
    assert sorted(m.vm_id for m in moved) == [f"d{i}" for i in range(6)]
    async with db.session() as s:
        assert set(await s.scalars(select(Placement.taking_over))) == {claimer.id}
    assert await claim(db, "r-other") == ([], [])  # its lease is live: it's its to finish
    await asyncio.sleep(3.0)
    results = await _race(db, claim, 3, ("r-a", "r-b"))
    again = [m for r in results for m in r[0]]
    assert sorted(m.vm_id for m in again) == [f"d{i}" for i in range(6)]  # each once
    assert {m.host_id for m in again} == {"fine"}  # where the first claim placed them
    assert all(not r[1] for r in results)
