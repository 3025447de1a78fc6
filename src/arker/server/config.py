"""The server's settings: one frozen value built by `arker serve` (or a test)."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Settings"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    data_dir: str = "/var/lib/arker"
    database_url: str | None = None  # None: SQLite in data_dir
    region: str = "local"
    api_prefix: str = ""
    burst_suffix: str | None = None
    max_json_bytes: int = 16 * MIB
    max_file_bytes: int = 1024 * MIB
    output_cap_bytes: int = 8 * MIB  # per stream, in an answer
    stored_output_bytes: int = 1 * MIB  # per stream, kept in the database (head + tail)
    run_retention_s: float = 7 * 86400  # ended runs are deleted after this; 0: kept
    auth_cache_s: float = 2.0  # how long a revoked key may still pass
    engine_threads: int = 32  # blocking engine calls at once (waits excluded)
    # Admission: the memory limits of the host's live VMs may add up to this
    # many times its memory (idle VMs use a few MiB of their 1 GiB limit).
    overcommit: float = 10.0
    host_memory_bytes: int | None = None  # None: MemTotal of /proc/meminfo
    org_max_vms: int | None = None  # None: no quota
    org_max_memory_mib: int | None = None
    vm_disk_mib: int | None = 10240  # a new VM's disk quota; None: no quota
    vm_disk_max_mib: int = 102400  # the largest quota a fork may ask for
    # The largest size a fork may ask for (resources.cpu, memory_mib, pids);
    # None: the host's CPUs, the host's memory.
    vm_max_cpu: float | None = None
    vm_max_memory_mib: int | None = None
    vm_max_pids: int = 32768
    # Forks and runs get insufficient_storage below this much free pool space:
    # a fixed amount rather than a percentage, since what btrfs needs to keep
    # working (metadata for a commit, deletes) does not grow with the disk.
    pool_reserve_mib: int = 2048
    egress: bool = True  # a fork that says nothing of its network, from a golden
    # Each VM in a user namespace of its own where the kernel can idmap the
    # pool; False runs root in a VM as host root (the bench's baseline).
    user_namespaces: bool = True
    # Requests whose Host is {port}-{vm_id}.<preview_domain> are relayed to
    # that port of that VM (for browsers); None: only the /ports/ paths.
    preview_domain: str | None = None
    # What a fork that says nothing of them gets (a fork may send null: none).
    default_ttl_s: int | None = None  # None: VMs live until deleted
    default_idle_stop_s: int | None = None  # None: VMs are never stopped for idleness
    lifecycle_interval_s: float = 1.0  # how often expired and idle VMs are looked for
    # A replica of a cluster (cluster/): no engine of its own; VMs live on
    # host agents called with host_token; goldens and checkpoints in blob_url.
    cluster: bool = False
    blob_url: str | None = None
    host_token: str | None = None

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{os.path.join(self.data_dir, 'arker.db')}"
