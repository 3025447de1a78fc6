"""Everything one run measured, and the flat figures the report, the JSON and
the goals are made from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arkerbench.crowd import Burst, DeleteCrowd, IdleMemory
from arkerbench.scenarios import ForkSeries, SideBySide, StreamLatency, Transfer
from arkerbench.stats import Series

__all__ = ["Results"]

MIB = 1024 * 1024
FIT_IN_BYTES = 20 * 1024 * MIB


@dataclass(frozen=True)
class Results:
    fork_golden: ForkSeries
    fork_empty: ForkSeries  # a running VM that holds nothing of its own
    fork_big: ForkSeries  # a running VM holding `big_bytes`
    big_bytes: int
    create: Series
    burst: Burst
    run: Series
    transfer: Transfer
    memory: IdleMemory
    true_floor: Series
    http_floor: Series
    side: SideBySide
    userns: SideBySide  # this server against one with --userns off
    sizes: SideBySide  # sized VMs (SIZED) against unsized ones, same server
    deletes: DeleteCrowd
    stream: StreamLatency

    def figures(self) -> dict[str, float]:
        """Every figure by name; each is a positive number in a sound run."""
        f: dict[str, float] = {}

        def put(name: str, s: Series) -> None:
            f[f"{name}_median_ms"] = s.median_ms
            f[f"{name}_p99_ms"] = s.p99_ms

        put("fork_golden", self.fork_golden.api)
        put("fork_empty_vm", self.fork_empty.api)
        put("fork_big", self.fork_big.api)
        put("create_to_first_command", self.create)
        put("burst", self.burst.each)
        f["burst_wall_ms"] = self.burst.wall_ms
        put("run_round_trip", self.run)
        t = self.transfer
        f["file_write_mb_per_s"] = Transfer.mb_per_s(t.size_bytes, t.write)
        f["file_read_mb_per_s"] = Transfer.mb_per_s(t.size_bytes, t.read)
        f["idle_vm_mib"] = self.memory.per_vm_bytes / MIB
        f["vms_in_20_gib"] = FIT_IN_BYTES / self.memory.per_vm_bytes

        def put_cost(pair: Any, on: str, off: str, cost: str) -> None:
            """A feature's cost: the same fork and create with it over without it."""
            for work in ("fork", "create"):
                with_it, without = getattr(pair, f"{work}_on"), getattr(pair, f"{work}_off")
                put(f"{on}_{work}", with_it)
                put(f"{off}_{work}", without)
                f[f"{cost}_cost_{work}_ratio"] = with_it.median_ms / without.median_ms

        q = self.side
        put_cost(q, "quota_on", "quota_off", "quota")
        put("net_off_create", q.create_no_egress)
        # The cost of a VM's network: a create with egress over one without.
        f["network_cost_create_ratio"] = q.create_on.median_ms / q.create_no_egress.median_ms
        put_cost(self.userns, "userns_on", "userns_off", "userns")
        # Asking for a size: a sized VM over an unsized one.
        put_cost(self.sizes, "sized", "unsized", "sized")
        d = self.deletes
        put("probe_quiet", d.quiet)
        put("probe_during_deletes", d.busy)
        f["delete_crowd_wall_ms"] = d.wall_ms
        f["probe_during_deletes_max_ms"] = max(d.busy.samples_ms)
        f["deleted_vms"] = d.vms
        # Deleting many VMs must not block other calls: the probe's median
        # while they go over its median with nothing going on.
        f["delete_crowd_probe_ratio"] = d.busy.median_ms / d.quiet.median_ms
        put("stream_echo", self.stream.echo)
        put("floor_stdin_post", self.stream.post)
        put("floor_ioctl_golden", self.fork_golden.ioctl)
        put("floor_ioctl_empty_vm", self.fork_empty.ioctl)
        put("floor_ioctl_big", self.fork_big.ioctl)
        put("floor_subprocess_true", self.true_floor)
        put("floor_http_noop", self.http_floor)
        return f

    def details(self) -> dict[str, Any]:
        """Readings behind the figures (may be zero: e.g. a host whose free
        memory grew while the VMs started)."""
        return {
            "big_vm_bytes": self.big_bytes,
            "file_bytes": self.transfer.size_bytes,
            "burst_vms": self.burst.n,
            "idle_vms": self.memory.vms,
            "idle_vm_cgroup_mib": self.memory.cgroup_bytes_per_vm / MIB,
            "idle_vm_host_mib": self.memory.host_bytes_per_vm / MIB,
            "deleted_vms": self.deletes.vms,
        }

    def series(self) -> dict[str, dict[str, Any]]:
        named = {
            "fork_golden": self.fork_golden.api,
            "fork_empty_vm": self.fork_empty.api,
            "fork_big": self.fork_big.api,
            "create_to_first_command": self.create,
            "burst": self.burst.each,
            "run_round_trip": self.run,
            "file_write": self.transfer.write,
            "file_read": self.transfer.read,
            "quota_on_fork": self.side.fork_on,
            "quota_off_fork": self.side.fork_off,
            "quota_on_create": self.side.create_on,
            "quota_off_create": self.side.create_off,
            "net_off_create": self.side.create_no_egress,
            "userns_off_fork": self.userns.fork_off,
            "userns_off_create": self.userns.create_off,
            "sized_fork": self.sizes.fork_on,
            "sized_create": self.sizes.create_on,
            "stream_echo": self.stream.echo,
            "floor_stdin_post": self.stream.post,
            "probe_quiet": self.deletes.quiet,
            "probe_during_deletes": self.deletes.busy,
            "floor_ioctl_golden": self.fork_golden.ioctl,
            "floor_ioctl_empty_vm": self.fork_empty.ioctl,
            "floor_ioctl_big": self.fork_big.ioctl,
            "floor_subprocess_true": self.true_floor,
            "floor_http_noop": self.http_floor,
        }
        return {k: {**s.summary(), "samples_ms": s.samples_ms} for k, s in named.items()}
