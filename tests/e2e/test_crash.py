"""SIGKILL the server mid-run and start it again: a durable VM's run starts
again from its checkpoint and completes once; a plain VM's run is failed and
the VM keeps working; everything committed before the kill is still there.
Checkpoints do not pile up on the real engine either."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from live import make_live, stop_live

from arker import Arker, RunStatus

DURABLE_JOB = "echo try >> /home/user/attempts; sleep 3; echo done >> /home/user/log"


def _wait_done(vm: object, run_id: str, timeout_s: float = 60) -> RunStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status: RunStatus = vm.run_status(run_id)  # type: ignore[attr-defined]
        if status.state not in ("queued", "running") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _checkpoints(data_dir: Path, vm_id: str) -> list[str]:
    found = list(data_dir.glob(f"pool/checkpoints/{vm_id}/*"))
    return [p.name for p in found]


def test_sigkill_during_runs_then_restart(single_db: str | None) -> None:
    live = make_live(single_db)
    try:
        with Arker(api_key=live.keys["acme"], base_url=live.url) as arker:
            durable = arker.vm("busybox").fork(name="durable", durable=True)
            plain = arker.vm("busybox").fork(name="plain")
            assert durable.info is not None and durable.info.durable
            finished = plain.run("echo kept")
            d_run = durable.run(DURABLE_JOB, background=True)
            p_run = plain.run("sleep 30", background=True)
            deadline = time.monotonic() + 10
            while durable.run_status(d_run.run_id).state != "running":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(1.0)  # the first attempt is half done: "try" is written

            live.server.kill()
            live.server.start()

            status = _wait_done(durable, d_run.run_id)
            assert status.state == "completed", (status.failure_reason, live.server.log()[-3000:])
            assert status.retry_count == 1 and status.exit_code == 0
            # the half-done attempt left no trace: one try, one line
            assert durable.sync.read_file("/home/user/attempts") == b"try\n"
            assert durable.sync.read_file("/home/user/log") == b"done\n"

            failed = plain.run_status(p_run.run_id)
            assert failed.state == "failed" and failed.failure_reason
            again = plain.run("echo alive")
            assert again.type == "completed" and again.stdout == b"alive\n"

            kept = plain.run_status(finished.run_id)
            assert kept.state == "completed" and kept.stdout == b"kept\n"
            assert {durable.vm_id, plain.vm_id} <= {v.vm_id for v in arker.list().items}
            durable.delete()
            plain.delete()
    finally:
        stop_live(live)


def test_durable_checkpoints_stay_few(single_db: str | None) -> None:
    live = make_live(single_db)
    try:
        with (
            Arker(api_key=live.keys["acme"], base_url=live.url) as arker,
            arker.vm("busybox").fork(durable=True) as vm,
        ):
            most = 0
            for i in range(40):
                r = vm.run(f"echo {i} >> /home/user/n")
                assert r.type == "completed"
                most = max(most, len(_checkpoints(live.server.data_dir, vm.vm_id)))
            assert 1 <= most <= 2
            assert vm.sync.read_file("/home/user/n").count(b"\n") == 40
    finally:
        stop_live(live)


def test_sigkill_during_a_foreground_durable_run_sdk_retry_gets_the_result(
    single_db: str | None,
) -> None:
    """The SDK retries the same request under its one Idempotency-Key; after the
    restart that retry waits for the re-run and gets its result."""
    live = make_live(single_db)
    patient = {"attempts": 40, "base_delay_s": 0.1, "max_delay_s": 0.5}
    try:
        with Arker(api_key=live.keys["acme"], base_url=live.url, retry=patient) as arker:
            vm = arker.vm("busybox").fork(durable=True)
            outcome: dict[str, object] = {}

            def call() -> None:
                try:
                    outcome["result"] = vm.run(DURABLE_JOB.replace("sleep 3", "sleep 2"))
                except Exception as exc:  # reported below
                    outcome["error"] = exc

            worker = threading.Thread(target=call)
            worker.start()
            deadline = time.monotonic() + 10
            while b"try" not in _read_or_empty(vm, "/home/user/attempts"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            live.server.kill()
            live.server.start()
            worker.join(60)
            assert "error" not in outcome, outcome
            result = outcome["result"]
            assert result.type == "completed", result  # type: ignore[attr-defined]
            status = vm.run_status(result.run_id)  # type: ignore[attr-defined]
            assert status.retry_count == 1
            assert vm.sync.read_file("/home/user/attempts") == b"try\n"
            assert vm.sync.read_file("/home/user/log") == b"done\n"
            vm.delete()
    finally:
        stop_live(live)


def _read_or_empty(vm: object, path: str) -> bytes:
    try:
        data: bytes = vm.sync.read_file(path)  # type: ignore[attr-defined]
        return data
    except Exception:
        return b""
