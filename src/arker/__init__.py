"""Arker: fork throwaway Linux machines in constant time, run commands, sync files.

    from arker import Arker

    with Arker(region="aws-us-west-2") as arker:
        with arker.vm("debian").fork(name="hello") as vm:
            result = vm.run("echo hello")
            if result.type == "completed":
                print(result.stdout_text)

`import arker` loads the SDK only; no server or engine code.
"""

from __future__ import annotations

from arker.client import (
    ArchiveUnpacked,
    Arker,
    AsyncArker,
    AsyncComputer,
    AsyncFileSync,
    AsyncFs,
    AsyncNetwork,
    AsyncPty,
    AsyncRunHandle,
    CancelledRun,
    CompletedRun,
    Computer,
    FailedRun,
    FileSync,
    FileWritten,
    Fs,
    FsEntry,
    FsList,
    Golden,
    Network,
    Operation,
    PortToken,
    Pty,
    RetryPolicy,
    RunEvent,
    RunHandle,
    RunResult,
    RunState,
    RunStatus,
    RunStdinWritten,
    StartedRun,
    TimedOutRun,
    Vm,
    VmPage,
)
from arker.errors import ArkerError, ErrorCode

__version__ = "0.1.0"

__all__ = [
    "ArchiveUnpacked",
    "Arker",
    "ArkerError",
    "AsyncArker",
    "AsyncComputer",
    "AsyncFileSync",
    "AsyncFs",
    "AsyncNetwork",
    "AsyncPty",
    "AsyncRunHandle",
    "CancelledRun",
    "FailedRun",
    "CompletedRun",
    "Computer",
    "ErrorCode",
    "FileSync",
    "Fs",
    "FileWritten",
    "FsEntry",
    "FsList",
    "Golden",
    "Network",
    "Operation",
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
]
