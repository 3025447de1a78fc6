"""The figures that need many VMs at once, through the async SDK: N creates to
first command started together, and the idle memory of a crowd of running
VMs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from arker import ArkerError, AsyncArker
from arker.engine._cgroups import Cgroups
from arkerbench.scenarios import GOLDEN
from arkerbench.stats import Series

__all__ = [
    "Burst",
    "DeleteCrowd",
    "IdleMemory",
    "burst",
    "delete_crowd",
    "idle_memory",
    "mem_available_bytes",
]

SETTLE_S = 2.0  # let page reclaim and the pool flusher settle before reading memory


@asynccontextmanager
async def _client(base_url: str, api_key: str, connections: int) -> AsyncIterator[AsyncArker]:
    """An async SDK client whose pool lets `connections` requests be in flight."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits) as http:
        yield AsyncArker(api_key, base_url=base_url, retry=False, http_client=http, timeout_s=300)


async def _start_one(arker: AsyncArker, made: list[str]) -> float:
    """Fork the golden and run `true`; milliseconds. The VM is recorded in
    `made` as soon as it exists, so it is deleted whatever happens next."""
    start = time.perf_counter()
    vm = await arker.vm(GOLDEN).fork()
    made.append(vm.vm_id)
    result = await vm.run("true")
    took = (time.perf_counter() - start) * 1000
    if result.type != "completed" or result.exit_code != 0:
        raise RuntimeError(f"`true` did not succeed in {vm.vm_id}: {result}")
    return took


async def _start_many(arker: AsyncArker, n: int, at_once: int, made: list[str]) -> list[float]:
    """n `_start_one` with at most `at_once` in flight; raises if any failed."""
    gate = asyncio.Semaphore(at_once)

    async def bounded() -> float:
        async with gate:
            return await _start_one(arker, made)

    results = await asyncio.gather(*(bounded() for _ in range(n)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} failed; first: {failures[0]!r}")
    return [r for r in results if not isinstance(r, BaseException)]


async def _delete_all(
    arker: AsyncArker, vm_ids: list[str], at_once: int = 16, *, quietly: bool = False
) -> None:
    """Delete every VM, trying all of them even when some fail; raises then,
    unless `quietly` (a cleanup after a failure: what is gone is fine)."""
    gate = asyncio.Semaphore(at_once)

    async def one(vm_id: str) -> None:
        async with gate:
            await arker.vm(vm_id).delete()

    results = await asyncio.gather(*(one(v) for v in vm_ids), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if quietly:
        for exc in failed:
            if not isinstance(exc, ArkerError):
                raise exc
    elif failed:
        raise RuntimeError(f"could not delete {len(failed)} of {len(vm_ids)} VMs: {failed[0]!r}")


@dataclass(frozen=True)
class Burst:
    n: int
    each: Series  # each create-to-first-command, as its caller saw it
    wall_ms: float  # from the first request sent to the last answer


async def _burst(base_url: str, api_key: str, n: int) -> Burst:
    made: list[str] = []
    async with _client(base_url, api_key, n) as arker:
        try:
            start = time.perf_counter()
            each = await _start_many(arker, n, n, made)
            wall = (time.perf_counter() - start) * 1000
        finally:
            await _delete_all(arker, made)
    return Burst(n, Series(each), wall)


def burst(base_url: str, api_key: str, n: int) -> Burst:
    """n forks of the golden, each followed by `true`, all sent at once; the
    VMs are deleted afterwards, outside the timing."""
    return asyncio.run(_burst(base_url, api_key, n))


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclass(frozen=True)
class IdleMemory:
    vms: int
    cgroup_bytes_per_vm: float  # sum of the VMs' memory cgroup usage / vms
    host_bytes_per_vm: float  # drop of MemAvailable / vms (other work on the host adds noise)

    @property
    def per_vm_bytes(self) -> float:
        """The larger (the more conservative) of the two readings."""
        return max(self.cgroup_bytes_per_vm, self.host_bytes_per_vm)


async def _idle_memory(base_url: str, api_key: str, data_dir: Path, n: int) -> IdleMemory:
    cgroups = Cgroups(data_dir)
    made: list[str] = []
    async with _client(base_url, api_key, 32) as arker:
        await asyncio.sleep(SETTLE_S)
        before = mem_available_bytes()
        try:
            await _start_many(arker, n, 16, made)
            await asyncio.sleep(SETTLE_S)
            after = mem_available_bytes()
            in_cgroups = sum(cgroups.memory_bytes(vm_id) for vm_id in made)
        finally:
            await _delete_all(arker, made)
    return IdleMemory(n, in_cgroups / n, (before - after) / n)


def idle_memory(base_url: str, api_key: str, data_dir: Path, n: int) -> IdleMemory:
    """Start n VMs (fork + `true`, 16 at a time) and leave them running idle;
    read their memory, then delete them."""
    return asyncio.run(_idle_memory(base_url, api_key, data_dir, n))


@dataclass(frozen=True)
class DeleteCrowd:
    vms: int  # networked VMs deleted at once
    quiet: Series  # the probe call with nothing else going on
    busy: Series  # the same call while the VMs are being deleted
    wall_ms: float  # from the first delete sent to the last answer


# The probe runs in a process of its own: in this one, its calls would wait
# behind the 64 deletes' in this event loop, and that (seconds) is not the
# server's doing. It runs `true` until its stdin closes, then prints
# [[unix time, ms], ...].
_PROBE = """
import json, sys, threading, time
from arker import Arker
vm = Arker(sys.argv[1], base_url=sys.argv[2], retry=False).vm(sys.argv[3])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
out = []
while not done.is_set():
    start = time.perf_counter()
    result = vm.run("true")
    assert result.type == "completed" and result.exit_code == 0, result
    out.append((time.time(), (time.perf_counter() - start) * 1000))
print(json.dumps(out))
"""
QUIET_S = 2.0  # the probe alone, before the deletes


async def _delete_crowd(base_url: str, api_key: str, n: int) -> DeleteCrowd:
    made: list[str] = []
    async with _client(base_url, api_key, 80) as arker:
        probe = await arker.vm(GOLDEN).fork()
        try:
            await probe.run("true")
            await _start_many(arker, n, 16, made)
            proc = subprocess.Popen(
                [sys.executable, "-c", _PROBE, api_key, base_url, probe.vm_id],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            try:
                await asyncio.sleep(QUIET_S)
                start = time.time()
                await _delete_all(arker, made, at_once=64)
                made.clear()
                end = time.time()
            finally:
                out, _ = await asyncio.to_thread(proc.communicate, b"")
            if proc.returncode != 0:
                raise RuntimeError(f"the probe failed (exit {proc.returncode})")
        finally:
            await _delete_all(arker, [*made, probe.vm_id], quietly=True)
    samples = json.loads(out)
    quiet = [ms for at, ms in samples if at < start]
    busy = [ms for at, ms in samples if start <= at <= end]
    if not quiet or not busy:
        raise RuntimeError(f"the probe ran {len(quiet)} times quiet and {len(busy)} busy")
    return DeleteCrowd(n, Series(quiet), Series(busy), (end - start) * 1000)


def delete_crowd(base_url: str, api_key: str, n: int) -> DeleteCrowd:
    """Start n VMs with the server's default network (egress on), then delete
    them all, 64 at a time, while another VM runs `true` over and over (from
    another process): its latency while they go, next to the same with
    nothing going on."""
    return asyncio.run(_delete_crowd(base_url, api_key, n))
