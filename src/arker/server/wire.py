"""Rows -> contract models. No I/O and no rules: just the shapes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from arker import _types as t
from arker.engine.base import GoldenInfo, NetworkPolicy, OutputChunk, RunInfo, VmPower
from arker.server import sizes
from arker.server.store import Run, Vm

__all__ = [
    "golden",
    "network",
    "network_json",
    "run_result",
    "run_status",
    "started",
    "stored_network",
    "ts",
    "vm",
]

TERMINAL = frozenset({"completed", "timed_out", "cancelled", "failed"})


def ts(unix_s: float) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)


def _opt_ts(unix_s: float | None) -> datetime | None:
    return None if unix_s is None else ts(unix_s)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _warnings(row: Run) -> list[t.RunWarning]:
    if not row.warnings:
        return []
    return [t.RunWarning(code=w["code"], message=w["message"]) for w in json.loads(row.warnings)]


def stored_network(row: Vm) -> NetworkPolicy:
    """The policy a row holds; a VM made before networking had loopback only."""
    return NetworkPolicy.from_dict(None if row.network is None else json.loads(row.network))


def network_json(policy: NetworkPolicy) -> str:
    return json.dumps(policy.as_dict())


def network(policy: NetworkPolicy) -> t.NetworkPolicy:
    return t.NetworkPolicy.model_validate(policy.as_dict())


def golden(info: GoldenInfo) -> t.Golden:
    return t.Golden(name=info.name, description=info.description, created_at=ts(info.created_at))


def vm(row: Vm, region: str, power: VmPower | None, host: str | None = None) -> t.Vm:
    """`host`: the id of the cluster host that holds it (absent outside a cluster)."""
    state = "lost" if row.lost else "running" if power is VmPower.RUNNING else "stopped"
    extra = {"host": host} if host is not None else {}
    return t.Vm(
        **extra,
        vm_id=row.id,
        name=row.name,
        base_image=row.base_image,
        region=region,
        created_at=ts(row.created_at),
        parent_id=row.parent_id,
        durable=row.durable,
        state=state,
        resources=sizes.reported(row),
        network=network(stored_network(row)),
        expires_at=_opt_ts(row.expires_at),
        idle_stop_s=row.idle_stop_s,
        labels=row.labels or {},
    )


def started(run_id: str) -> t.StartedRun:
    return t.StartedRun(type="started", run_id=run_id)


def run_result(row: Run) -> t.CompletedRun | t.TimedOutRun | t.CancelledRun | t.FailedRun:
    """The foreground answer for a run in a terminal state."""
    common = {
        "run_id": row.id,
        "stdout": _b64(row.stdout),
        "stderr": _b64(row.stderr),
        "stdout_truncated": row.stdout_truncated,
        "stderr_truncated": row.stderr_truncated,
        "duration_ms": row.duration_ms or 0,
        "warnings": _warnings(row),
    }
    if row.state == "completed":
        return t.CompletedRun(
            type="completed",
            exit_code=row.exit_code if row.exit_code is not None else -1,
            oom_killed=row.oom_killed,
            **common,
        )
    if row.state == "timed_out":
        return t.TimedOutRun(type="timed_out", timeout_s=row.timeout_s or 0.0, **common)
    if row.state == "failed":
        reason = row.failure_reason or "the run was lost"
        return t.FailedRun(type="failed", failure_reason=reason, **common)
    return t.CancelledRun(type="cancelled", **common)


def run_status(
    row: Run,
    live: RunInfo | None = None,
    *,
    output: bool = True,
    window: tuple[OutputChunk, OutputChunk] | None = None,
) -> t.RunStatus:
    """`live` is the engine's view of a run still going (output so far);
    `window` the output to send instead, by stream offsets; without `output`,
    stdout and stderr go empty (their totals still say how much there is)."""
    stdout, stderr = row.stdout, row.stderr
    out_trunc, err_trunc = row.stdout_truncated, row.stderr_truncated
    # Rows that never counted (older, or failed with no output): what they hold.
    out_bytes = len(stdout) if row.stdout_bytes is None else row.stdout_bytes
    err_bytes = len(stderr) if row.stderr_bytes is None else row.stderr_bytes
    out_start = err_start = 0
    duration = row.duration_ms
    if live is not None and row.state not in TERMINAL:
        stdout, stderr = live.stdout, live.stderr
        out_trunc, err_trunc = live.stdout_truncated, live.stderr_truncated
        out_bytes, err_bytes = live.stdout_bytes, live.stderr_bytes
        duration = live.duration_ms
    if window is not None:
        out, err = window
        stdout, stderr, out_start, err_start = out.data, err.data, out.start, err.start
        out_bytes, err_bytes = out.total, err.total
        if row.state not in TERMINAL:
            duration = None
    if not output:
        stdout = stderr = b""
    return t.RunStatus(
        run_id=row.id,
        vm_id=row.vm_id,
        state=row.state,
        background=row.background,
        exit_code=row.exit_code,
        stdout=_b64(stdout),
        stderr=_b64(stderr),
        stdout_truncated=out_trunc,
        stderr_truncated=err_trunc,
        stdout_bytes=out_bytes,
        stderr_bytes=err_bytes,
        stdout_start=out_start,
        stderr_start=err_start,
        oom_killed=row.oom_killed,
        retry_count=row.retry_count,
        failure_reason=row.failure_reason,
        created_at=ts(row.created_at),
        started_at=_opt_ts(row.started_at),
        finished_at=_opt_ts(row.finished_at),
        duration_ms=duration,
        warnings=_warnings(row),
    )
