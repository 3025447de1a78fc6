"""The Arker SDK: `Arker` (sync) and `AsyncArker`, and what they return."""

from __future__ import annotations

from arker.client._async import (
    AsyncArker,
    AsyncComputer,
    AsyncFileSync,
    AsyncNetwork,
    AsyncPty,
    AsyncRunHandle,
)
from arker.client._models import (
    CancelledRun,
    CompletedRun,
    FailedRun,
    FileWritten,
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
from arker.client._sync import Arker, Computer, FileSync, Network, Pty, RunHandle

__all__ = [
    "Arker",
    "AsyncArker",
    "AsyncComputer",
    "AsyncFileSync",
    "AsyncNetwork",
    "AsyncPty",
    "AsyncRunHandle",
    "BURST_GOLDENS",
    "CancelledRun",
    "FailedRun",
    "CompletedRun",
    "Computer",
    "FileSync",
    "FileWritten",
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
