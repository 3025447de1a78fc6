"""The Arker SDK: `Arker` (sync) and `AsyncArker`, and what they return."""

from __future__ import annotations

from arker.client._async import (
    AsyncArker,
    AsyncComputer,
    AsyncFileSync,
    AsyncFs,
    AsyncNetwork,
    AsyncPty,
    AsyncRunHandle,
)
from arker.client._models import (
    ArchiveUnpacked,
    CancelledRun,
    CompletedRun,
    FailedRun,
    FileWritten,
    FsEntry,
    FsList,
    Golden,
    PortToken,
    RunEvent,
    RunResult,
    RunState,
    RunStatus,
    RunStdinWritten,
    StartedRun,
    TimedOutRun,
    Vm,
    VmPage,
)
from arker.client._retry import RetryPolicy
from arker.client._routing import BURST_GOLDENS, is_burst_vm_id
from arker.client._sync import Arker, Computer, FileSync, Fs, Network, Pty, RunHandle

__all__ = [
    "ArchiveUnpacked",
    "Arker",
    "AsyncArker",
    "AsyncComputer",
    "AsyncFileSync",
    "AsyncFs",
    "AsyncNetwork",
    "AsyncPty",
    "AsyncRunHandle",
    "BURST_GOLDENS",
    "CancelledRun",
    "FailedRun",
    "CompletedRun",
    "Computer",
    "FileSync",
    "Fs",
    "FileWritten",
    "FsEntry",
    "FsList",
    "Network",
    "Golden",
    "PortToken",
    "Pty",
    "RetryPolicy",
    "RunEvent",
    "RunHandle",
    "RunResult",
    "RunState",
    "RunStatus",
    "RunStdinWritten",
    "StartedRun",
    "TimedOutRun",
    "Vm",
    "VmPage",
    "is_burst_vm_id",
]
