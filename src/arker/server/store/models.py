"""Tables. Times are unix seconds (float) so SQLite and PostgreSQL agree on
them without time-zone handling; the wire format is built in the service."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKey",
    "Base",
    "ClusterHost",
    "ClusterReplica",
    "Golden",
    "Operation",
    "Placement",
    "Run",
    "Upload",
    "Vm",
]


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(32))  # shown by `keys ls`; not a secret
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    org: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255), default=None)  # a label for people
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)  # may read /metrics


class Vm(Base):
    __tablename__ = "vms"
    __table_args__ = (
        UniqueConstraint("org", "idem_key", name="uq_vms_org_idem_key"),
        Index("ix_vms_org_created", "org", "deleted_at", "created_at"),
        Index("ix_vms_expires", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(63), default=None)
    base_image: Mapped[str] = mapped_column(String(128))
    parent_id: Mapped[str | None] = mapped_column(String(64), default=None)
    durable: Mapped[bool] = mapped_column(Boolean, default=False)
    lost: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float, default=None)
    idem_key: Mapped[str | None] = mapped_column(String(255), default=None)
    idem_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    disk_mib: Mapped[int | None] = mapped_column(Integer, default=None)  # None: no quota
    # The VM's size (server/sizes.py); None: made before sizes, the defaults.
    cpu: Mapped[float | None] = mapped_column(Float, default=None)
    memory_mib: Mapped[int | None] = mapped_column(Integer, default=None)
    pids: Mapped[int | None] = mapped_column(Integer, default=None)
    # {"egress": bool, "allow": [...] | null} as JSON; None: made before
    # networking, loopback only.
    network: Mapped[str | None] = mapped_column(Text, default=None)
    # Lifecycle (see lifecycle.py): deleted at expires_at; stopped after
    # idle_stop_s with nothing to do. active_at is the last activity any
    # server wrote down (each keeps the exact time in memory and writes it
    # every sweep), so servers sharing the database and a restarted server
    # agree on when a VM went idle. None: no TTL, no idle stop, not known.
    expires_at: Mapped[float | None] = mapped_column(Float, default=None)
    idle_stop_s: Mapped[int | None] = mapped_column(Integer, default=None)
    active_at: Mapped[float | None] = mapped_column(Float, default=None)
    # {key: value}; None: no labels. JSON, so a list filters on it in SQL
    # (json_extract on SQLite, ->> on PostgreSQL).
    labels: Mapped[dict[str, str] | None] = mapped_column(JSON(none_as_null=True), default=None)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("org", "idem_key", name="uq_runs_org_idem_key"),
        Index("ix_runs_state", "state"),
        Index("ix_runs_vm", "vm_id"),
        Index("ix_runs_finished", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_id: Mapped[str] = mapped_column(String(64))
    org: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    background: Mapped[bool] = mapped_column(Boolean)
    # The request as JSON, so a restart can run it again from a checkpoint.
    spec: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64))
    idem_key: Mapped[str | None] = mapped_column(String(255), default=None)
    timeout_s: Mapped[float | None] = mapped_column(Float, default=None)
    checkpoint_id: Mapped[str | None] = mapped_column(String(64), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    stdout: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    stderr: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    stdout_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    stderr_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bytes each stream carried in all; past what is kept, stdout holds its
    # head and its tail (half each). None: a row from before they were counted.
    stdout_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    stderr_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    oom_killed: Mapped[bool] = mapped_column(Boolean, default=False)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    duration_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    warnings: Mapped[str | None] = mapped_column(Text, default=None)  # JSON [{code, message}]
    # The cluster replica whose task drives the run (cluster/replica.py); None
    # outside a cluster. A run whose driver's lease lapsed is adopted by another.
    driver: Mapped[str | None] = mapped_column(String(64), default=None)


class Upload(Base):
    """One row per Upload-Id: a retried PUT returns this instead of writing again."""

    __tablename__ = "uploads"

    org: Mapped[str] = mapped_column(String(255), primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    vm_id: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(4096))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class ClusterHost(Base):
    """A host agent of a cluster (cluster/leases.py): its lease and what it offers.
    Unused (empty) outside a cluster."""

    __tablename__ = "cluster_hosts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(1024))  # --advertise: where replicas call it
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 of its host token
    # Incremented on each acquisition of the lease: what a host holds it by.
    fence: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_expires_at: Mapped[float] = mapped_column(Float)  # the database's clock
    seen_at: Mapped[float] = mapped_column(Float)
    # {"memory_free_bytes", "memory_total_bytes", "cpu_free", "cpu_total"}
    capacity: Mapped[dict[str, float] | None] = mapped_column(JSON, default=None)
    goldens: Mapped[list[str] | None] = mapped_column(JSON, default=None)  # names held


class ClusterReplica(Base):
    """An API replica of a cluster, by the lease it renews (cluster/replica.py),
    so that the runs it drove are adopted by another when it dies."""

    __tablename__ = "cluster_replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lease_expires_at: Mapped[float] = mapped_column(Float)  # the database's clock
    seen_at: Mapped[float] = mapped_column(Float)


class Placement(Base):
    """Which host holds a VM of a cluster, under which fence, and what a host
    taking it over needs to make it again."""

    __tablename__ = "vm_placements"
    __table_args__ = (Index("ix_vm_placements_host", "host_id"),)

    vm_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(64))
    fence: Mapped[int] = mapped_column(BigInteger)
    spec: Mapped[dict[str, object]] = mapped_column(JSON)  # hostname, limits, network
    placed_at: Mapped[float] = mapped_column(Float)
    # The replica restoring the VM on its new host after a takeover, until it
    # has; if that replica's lease lapses first, another one does it again.
    taking_over: Mapped[str | None] = mapped_column(String(64), default=None)


class Golden(Base):
    """A golden one org published (or is importing): its name as the org's
    keys say it, and the engine's name for it, unique across orgs. Built-in
    goldens (and an admin's, published for all) have no row: the engine's
    name is theirs."""

    __tablename__ = "goldens"

    org: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    engine_name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float)
    # False while an import runs: the name is taken, but nothing is forkable yet.
    ready: Mapped[bool] = mapped_column(Boolean, default=False)


class Operation(Base):
    """A long job of an org (an import of a golden), polled or streamed."""

    __tablename__ = "operations"
    __table_args__ = (Index("ix_operations_state", "state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # running, succeeded, failed
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int | None] = mapped_column(BigInteger, default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    golden: Mapped[dict[str, object] | None] = mapped_column(JSON, default=None)  # wire Golden
    error: Mapped[dict[str, object] | None] = mapped_column(
        JSON, default=None
    )  # code, message, status
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
