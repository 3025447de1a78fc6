"""A VM's size: what a fork asks for in `resources` (disk_mib, cpu,
memory_mib, pids), checked against this server's maxima, and the limits the
new VM gets. A fork of a VM inherits each of its parent's limits it does not
ask for; a fork of a golden gets the server's defaults. Rows made before a
field existed hold NULL there: the engine's default."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from arker import _types as t
from arker.engine.base import Limits
from arker.errors import ArkerError, ErrorCode

if TYPE_CHECKING:
    from arker.server.config import Settings
    from arker.server.store import Vm

__all__ = [
    "asked", "check", "host_memory_bytes", "limits", "maxima", "memory_bytes", "reported",
    "row_values",
]  # fmt: skip

MIB = 2**20
FIELDS = ("disk_mib", "cpu", "memory_mib", "pids")


def asked(resources: t.Resources | None) -> dict[str, float | int]:
    """The fields a request set (what its idempotency hash covers: a key made
    before a field existed stays valid)."""
    if resources is None:
        return {}
    return {k: v for k in FIELDS if (v := getattr(resources, k)) is not None}


def maxima(settings: Settings, host_memory: int) -> dict[str, float | int]:
    """The largest value of each field a fork may ask for: the server's
    settings, by default the host's CPUs and memory."""
    return {
        "disk_mib": settings.vm_disk_max_mib,
        "cpu": settings.vm_max_cpu if settings.vm_max_cpu is not None else os.cpu_count() or 1,
        "memory_mib": settings.vm_max_memory_mib or host_memory // MIB,
        "pids": settings.vm_max_pids,
    }


def check(sizes: dict[str, float | int], settings: Settings, host_memory: int) -> None:
    """400 naming the first field above this server's maximum."""
    top = maxima(settings, host_memory)
    for name, value in sizes.items():
        if value > top[name]:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                f"resources.{name} {value:g} is above this server's maximum of {top[name]:g}",
                details={"field": f"resources.{name}", "max": top[name]},
            )


def limits(
    sizes: dict[str, float | int], parent: Vm | None, settings: Settings, defaults: Limits
) -> Limits:
    """The new VM's limits: asked, else its parent's, else the defaults (for
    disk, the server's `vm_disk_mib`)."""
    disk_mib: float | None = settings.vm_disk_mib
    cpu: float | None = None
    memory_mib: float | None = None
    pids: float | None = None
    if parent is not None:
        disk_mib, cpu, memory_mib, pids = (
            parent.disk_mib, parent.cpu, parent.memory_mib, parent.pids,
        )  # fmt: skip
    disk_mib = sizes.get("disk_mib", disk_mib)
    cpu = sizes.get("cpu", cpu)
    memory_mib = sizes.get("memory_mib", memory_mib)
    pids = sizes.get("pids", pids)
    return replace(
        defaults,
        disk_bytes=None if disk_mib is None else int(disk_mib) * MIB,
        cpu_cores=defaults.cpu_cores if cpu is None else float(cpu),
        memory_bytes=defaults.memory_bytes if memory_mib is None else int(memory_mib) * MIB,
        pids_max=defaults.pids_max if pids is None else int(pids),
    )


def row_values(limits: Limits) -> dict[str, object]:
    """The VM row's columns for these limits."""
    return {
        "disk_mib": None if limits.disk_bytes is None else limits.disk_bytes // MIB,
        "cpu": limits.cpu_cores,
        "memory_mib": limits.memory_bytes // MIB,
        "pids": limits.pids_max,
    }


def reported(row: Vm, defaults: Limits = Limits()) -> t.VmResources:  # noqa: B008 - frozen
    """`Vm.resources`: the limits in force (NULL columns: the defaults)."""
    return t.VmResources(
        disk_mib=row.disk_mib,
        cpu=row.cpu if row.cpu is not None else defaults.cpu_cores,
        memory_mib=row.memory_mib if row.memory_mib is not None else defaults.memory_bytes // MIB,
        pids=row.pids if row.pids is not None else defaults.pids_max,
    )


def memory_bytes(row: Vm | None, defaults: Limits = Limits()) -> int:  # noqa: B008 - frozen
    """The memory limit a VM holds: what admission counts."""
    if row is None or row.memory_mib is None:
        return defaults.memory_bytes
    return row.memory_mib * MIB


def host_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ArkerError(ErrorCode.INTERNAL, "no MemTotal in /proc/meminfo")
