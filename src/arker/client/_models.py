"""What the SDK hands back: run results and statuses with output as `bytes`.

The wire carries output base64-encoded; these classes hold it decoded. They are
built from the generated `arker._types` models after validation (see
`_base.decode_*`), so their fields follow the contract. `Vm`, `Golden`,
`FileWritten`, `PortToken`, `FsEntry`, `FsList` and `ArchiveUnpacked` carry
no bytes and are the generated models themselves.

    RunResult = CompletedRun | TimedOutRun | CancelledRun | FailedRun | StartedRun
    (narrow with `if result.type == "completed": ...`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from arker._types import (
    ArchiveUnpacked,
    FileWritten,
    FsEntry,
    FsList,
    Golden,
    Operation,
    PortToken,
    RunStdinWritten,
    RunWarning,
    Vm,
)

__all__ = [
    "ArchiveUnpacked",
    "CancelledRun",
    "FailedRun",
    "CompletedRun",
    "FileWritten",
    "FsEntry",
    "FsList",
    "Golden",
    "Operation",
    "PortToken",
    "RunEvent",
    "RunResult",
    "RunState",
    "RunStatus",
    "RunStdinWritten",
    "RunWarning",
    "StartedRun",
    "TimedOutRun",
    "Vm",
    "VmPage",
]

RunState = Literal["queued", "running", "completed", "timed_out", "cancelled", "failed"]


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True, kw_only=True)
class _Output:
    run_id: str
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    # Things an agent should know that are not errors (e.g. `pids_exhausted`);
    # empty from servers that send none.
    warnings: list[RunWarning] = field(default_factory=list)

    @property
    def stdout_text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return _text(self.stdout)

    @property
    def stderr_text(self) -> str:
        """stderr decoded as UTF-8 (undecodable bytes replaced)."""
        return _text(self.stderr)


@dataclass(frozen=True, kw_only=True)
class CompletedRun(_Output):
    """The command ended by itself. A non-zero exit is a result, not an error."""

    exit_code: int
    oom_killed: bool
    type: Literal["completed"] = "completed"


@dataclass(frozen=True, kw_only=True)
class TimedOutRun(_Output):
    """`timeout_s` passed and the run's process tree was killed."""

    timeout_s: float
    type: Literal["timed_out"] = "timed_out"


@dataclass(frozen=True, kw_only=True)
class CancelledRun(_Output):
    """The run was cancelled; its process tree was killed."""

    type: Literal["cancelled"] = "cancelled"


@dataclass(frozen=True, kw_only=True)
class FailedRun(_Output):
    """The server lost the run (a restart cut off a run of a non-durable VM, or
    its VM was stopped under it); `failure_reason` says which."""

    failure_reason: str
    type: Literal["failed"] = "failed"


@dataclass(frozen=True, kw_only=True)
class StartedRun:
    """A background run was accepted; poll it with `Computer.run_status(run_id)`."""

    run_id: str
    type: Literal["started"] = "started"


RunResult = CompletedRun | TimedOutRun | CancelledRun | FailedRun | StartedRun


@dataclass(frozen=True, kw_only=True)
class RunStatus:
    """A run's state and its output so far."""

    run_id: str
    vm_id: str
    state: RunState
    background: bool
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    oom_killed: bool
    retry_count: int
    failure_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    warnings: list[RunWarning] = field(default_factory=list)
    # Bytes each stream carried in all, and where `stdout`/`stderr` start in
    # their stream (a window: `run_status(..., stdout_after=)`); None from
    # servers that do not send them.
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    stdout_start: int | None = None
    stderr_start: int | None = None

    @property
    def done(self) -> bool:
        """True once the run can change no more."""
        return self.state not in ("queued", "running")

    @property
    def stdout_text(self) -> str:
        """stdout so far, decoded as UTF-8 (undecodable bytes replaced)."""
        return _text(self.stdout)

    @property
    def stderr_text(self) -> str:
        """stderr so far, decoded as UTF-8 (undecodable bytes replaced)."""
        return _text(self.stderr)


@dataclass(frozen=True, kw_only=True)
class RunEvent:
    """One event of a run's stream (`run.events()`): `stdout` or `stderr`
    with `data`; `gap` with `gap_bytes` of a stream the server no longer
    holds; `end` with the run's final `status` (its output left out: it came
    in the events). `stdout_offset`/`stderr_offset` are where each stream
    stands after this event: give them back to resume."""

    type: Literal["stdout", "stderr", "gap", "end"]
    stdout_offset: int
    stderr_offset: int
    data: bytes = b""
    stream: Literal["stdout", "stderr"] | None = None  # of a gap, or of output
    gap_bytes: int = 0
    status: RunStatus | None = None


@dataclass(frozen=True, kw_only=True)
class VmPage:
    """One page of `Arker.list()`: the VMs, newest first, and how many there are in all."""

    items: list[Vm]
    total: int
