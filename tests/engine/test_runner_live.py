"""Runs followed as they go: output read by offset (head and tail kept past
the cap), the counters that wake a reader, an open stdin, signals."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest
from conftest_exec import engine, engine_dir, make_vm, vm  # noqa: F401

from arker.engine.base import RunPhase, RunSpec
from arker.engine.host import NamespaceEngine
from arker.errors import ArkerError

pytestmark = pytest.mark.root


def _until(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _follow(eng: NamespaceEngine, vm_id: str, run_id: str, stream: str) -> tuple[bytes, int]:
    """Read the stream to its end by offset; (bytes, gap bytes)."""
    got, offset, gaps = [], 0, 0
    while True:
        chunk = eng.read_output(vm_id, run_id, stream, offset, 65536)
        gaps += chunk.start - offset
        got.append(chunk.data)
        offset = chunk.end
        if not chunk.data and eng.run_info(vm_id, run_id).done:
            last = eng.read_output(vm_id, run_id, stream, offset, 65536)
            if not last.data and last.start == offset:
                return b"".join(got), gaps
        elif not chunk.data:
            time.sleep(0.005)


def test_output_is_read_by_offset_while_the_run_goes(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start_run(vm, "live", RunSpec(command="echo one; sleep 1; echo two >&2; echo three"))
    try:
        _until(lambda: engine.read_output(vm, "live", "stdout", 0, 100).data == b"one\n")
        assert not engine.run_info(vm, "live").done  # seen before the run ended
        assert engine.read_output(vm, "live", "stdout", 2, 100).data == b"e\n"
        engine.wait_run(vm, "live", timeout_s=30)
        out = engine.read_output(vm, "live", "stdout", 4, 100)
        assert (out.start, out.data, out.total) == (4, b"three\n", 10)
        err = engine.read_output(vm, "live", "stderr", 0, 100)
        assert (err.data, err.total) == (b"two\n", 4)
        info = engine.run_info(vm, "live")
        assert (info.stdout_bytes, info.stderr_bytes) == (10, 4)
        with pytest.raises(ArkerError):
            engine.read_output(vm, "live", "stdin", 0, 1)
    finally:
        engine.forget_run(vm, "live")


def test_past_the_cap_head_and_tail_are_kept_and_the_middle_is_a_gap(
    engine: NamespaceEngine,  # noqa: F811
    vm: str,  # noqa: F811
) -> None:
    # 200,000 numbered lines (~1.3 MB) through a 64 KiB cap.
    cmd = "i=0; while [ $i -lt 200000 ]; do echo $i; i=$((i+1)); done"
    engine.start_run(vm, "long", RunSpec(command=cmd, output_cap_bytes=65536))
    try:
        info = engine.wait_run(vm, "long", timeout_s=120)
        assert info.phase is RunPhase.COMPLETED
        whole = b"".join(b"%d\n" % i for i in range(200000))
        assert info.stdout_bytes == len(whole) and info.stdout_truncated
        assert info.stdout == whole[:32768] + whole[-32768:]
        gap = engine.read_output(vm, "long", "stdout", 32768, 1 << 20)
        assert gap.start == len(whole) - 32768 and gap.data == whole[-32768:]
        head = engine.read_output(vm, "long", "stdout", 100, 1 << 20)
        assert (head.start, head.data) == (100, whole[100:32768])  # stops at the gap
    finally:
        engine.forget_run(vm, "long")


def test_a_reader_following_a_fast_writer_loses_only_a_counted_middle(
    engine: NamespaceEngine,  # noqa: F811
    vm: str,  # noqa: F811
) -> None:
    cmd = "i=0; while [ $i -lt 100000 ]; do echo line-$i; i=$((i+1)); done"
    engine.start_run(vm, "race", RunSpec(command=cmd, output_cap_bytes=8192))
    try:
        data, gaps = _follow(engine, vm, "race", "stdout")
        whole = b"".join(b"line-%d\n" % i for i in range(100000))
        assert len(data) + gaps == len(whole)
        assert whole.startswith(data[:4096]) and whole.endswith(data[-4096:])
        # whatever the reader got past the head is one piece of the stream each
        assert data[4096:] in whole or gaps > 0
    finally:
        engine.forget_run(vm, "race")


def test_the_wakers_turn_readable_on_output(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start_run(vm, "wake", RunSpec(command="sleep 0.5; echo hi"))
    try:
        out_fd, _ = engine.output_wakers(vm, "wake")
        poller = select.poll()
        poller.register(out_fd, select.POLLIN)
        assert poller.poll(30_000), "no wake-up for the output"
        assert engine.read_output(vm, "wake", "stdout", 0, 10).data == b"hi\n"
        assert not poller.poll(0)  # read_output drained it
        engine.wait_run(vm, "wake", timeout_s=30)
    finally:
        engine.forget_run(vm, "wake")


def test_an_open_stdin_takes_bytes_until_it_is_closed(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    spec = RunSpec(command="cat; echo done", stdin=b"first\n", stdin_open=True)
    engine.start_run(vm, "cat", spec)
    try:
        assert engine.write_stdin(vm, "cat", b"second\n", timeout_s=10) == 7
        _until(lambda: engine.read_output(vm, "cat", "stdout", 0, 100).data == b"first\nsecond\n")
        assert not engine.run_info(vm, "cat").done  # cat waits for more
        engine.close_stdin(vm, "cat")
        info = engine.wait_run(vm, "cat", timeout_s=30)
        assert info.stdout == b"first\nsecond\ndone\n"
        with pytest.raises(ArkerError) as err:
            engine.write_stdin(vm, "cat", b"late", timeout_s=1)
        assert err.value.code == "conflict"
    finally:
        engine.forget_run(vm, "cat")


def test_stdin_a_command_does_not_read_is_written_in_part(
    engine: NamespaceEngine,  # noqa: F811
    vm: str,  # noqa: F811
) -> None:
    engine.start_run(vm, "deaf", RunSpec(command="sleep 30", stdin_open=True))
    try:
        sent = engine.write_stdin(vm, "deaf", b"x" * (4 << 20), timeout_s=0.5)
        assert 0 < sent < 4 << 20  # the pipe's size, not all of it, and no hang
    finally:
        engine.cancel_run(vm, "deaf")
        engine.forget_run(vm, "deaf")


def test_without_stdin_open_stdin_is_empty(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start_run(vm, "plain", RunSpec(command="cat; echo end"))
    try:
        assert engine.wait_run(vm, "plain", timeout_s=30).stdout == b"end\n"
        with pytest.raises(ArkerError):
            engine.write_stdin(vm, "plain", b"x", timeout_s=1)
    finally:
        engine.forget_run(vm, "plain")


def test_a_signal_reaches_the_process_group(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    cmd = "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.1; done"
    engine.start_run(vm, "sig", RunSpec(command=cmd))
    try:
        _until(lambda: engine.read_output(vm, "sig", "stdout", 0, 100).data == b"ready\n")
        engine.signal_run(vm, "sig", signal.SIGINT)
        info = engine.wait_run(vm, "sig", timeout_s=30)
        assert (info.phase, info.exit_code) == (RunPhase.COMPLETED, 9)
        assert info.stdout == b"ready\ngot-int\n"
        with pytest.raises(ArkerError) as err:
            engine.signal_run(vm, "sig", signal.SIGTERM)
        assert err.value.code == "conflict"
    finally:
        engine.forget_run(vm, "sig")


def test_sigkill_ends_a_run_like_a_command_killed(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start_run(vm, "kill", RunSpec(command="echo up; sleep 300"))
    try:
        _until(lambda: engine.read_output(vm, "kill", "stdout", 0, 100).data == b"up\n")
        engine.signal_run(vm, "kill", signal.SIGKILL)
        info = engine.wait_run(vm, "kill", timeout_s=30)
        assert info.exit_code == 128 + signal.SIGKILL
    finally:
        engine.forget_run(vm, "kill")


def test_a_signal_sent_right_after_the_start_is_not_lost(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    """Signalled at once, a run's child may not have made its process group
    yet (setsid): the signal must reach it all the same, every time."""
    for i in range(30):
        run_id = f"early{i}"
        engine.start_run(vm, run_id, RunSpec(command="sleep 300"))
        try:
            engine.signal_run(vm, run_id, signal.SIGTERM)
            info = engine.wait_run(vm, run_id, timeout_s=20)
            assert info.done and info.exit_code == 128 + signal.SIGTERM, (i, info)
        finally:
            if not engine.run_info(vm, run_id).done:
                engine.cancel_run(vm, run_id)
            engine.forget_run(vm, run_id)


def test_no_fd_is_left_after_runs(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    def runs(n: int) -> None:
        for i in range(n):
            engine.start_run(vm, f"fd{i}", RunSpec(command="echo x", stdin_open=i % 2 == 0))
            if i % 2 == 0:
                engine.close_stdin(vm, f"fd{i}")
            engine.wait_run(vm, f"fd{i}", timeout_s=30)
            engine.forget_run(vm, f"fd{i}")

    runs(2)  # the VM's first runs open what it keeps (its agent, cgroup files)
    before = len(os.listdir("/proc/self/fd"))
    runs(20)
    assert len(os.listdir("/proc/self/fd")) == before
