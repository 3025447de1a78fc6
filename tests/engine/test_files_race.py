"""File access racing the VM: a directory swapped for a symlink (and back) while
the host reads and writes through it answers only the contract's codes."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest

from arker.engine import files
from arker.engine.files import FileWriter, read_file, write_file
from arker.engine.pool import Pool
from arker.errors import ArkerError

pytestmark = pytest.mark.root

MiB = 1024 * 1024
# What a race may answer: the path was not there, a symlink or a directory was
# in the way, or it changed while it was opened. Never an unmapped OSError.
RACE_CODES = {"not_found", "invalid_path", "conflict"}


@pytest.fixture
def vm(pool: Pool, busybox_golden: str) -> Path:
    return pool.fork(busybox_golden, "vm")


def _swap_loop(home: Path, stop: threading.Event, swaps: list[int]) -> None:
    """As the VM's root would with mv and ln -s: d is a directory, then a
    symlink through ".." (so openat2 walks "..", where a racing rename makes
    it answer EAGAIN), then a directory again. A write's missing parents may
    make d meanwhile: that one is taken away."""
    d, old = home / "d", home / "d.old"
    n = 0
    while not stop.is_set():
        try:
            if not os.path.lexists(old):
                if d.is_dir() and not d.is_symlink():
                    os.rename(d, old)
                else:
                    _clear(d)
                    old.mkdir()
            os.symlink("../user/other", d)
            for _ in range(4):  # any rename on the host, while a walk is in ".."
                os.rename(home / "a", home / "b")
                os.rename(home / "b", home / "a")
            _clear(d)
            os.rename(old, d)
            n += 1
        except OSError:
            _clear(d)
    swaps.append(n)


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def test_reads_and_writes_racing_a_dir_symlink_swap(
    vm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = vm / "home" / "user"
    (home / "d").mkdir()
    (home / "d" / "f").write_bytes(b"dir")
    (home / "other").mkdir()
    (home / "other" / "f").write_bytes(b"link")
    (home / "a").write_bytes(b"")
    stop, swaps = threading.Event(), []
    # Count the kernel's EAGAINs, to show the race was really run.
    real, eagains = files.openat2, [0]

    def counting(*args: object, **kwargs: object) -> int:
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        except BlockingIOError:
            eagains[0] += 1
            raise

    monkeypatch.setattr(files, "openat2", counting)
    swapper = threading.Thread(target=_swap_loop, args=(home, stop, swaps), daemon=True)
    outcomes: Counter[str] = Counter()
    swapper.start()
    try:
        for i in range(1500):
            try:
                if i % 3 == 0:
                    assert read_file(vm, "/home/user/d/f", MiB) in (b"dir", b"link")
                elif i % 3 == 1:
                    write_file(vm, f"/home/user/d/w{i % 7}", b"x" * 100)
                else:
                    w = FileWriter(vm, "/home/user/d/new/deeper/p")
                    w.write(b"piece")
                    w.commit()
                outcomes["ok"] += 1
            except ArkerError as exc:
                outcomes[str(exc.code)] += 1
                assert exc.code in RACE_CODES, exc
    finally:
        stop.set()
        swapper.join(10)
    print(f"\n{swaps[0]} swaps, {eagains[0]} EAGAINs from openat2; outcomes: {dict(outcomes)}")
    assert outcomes["ok"] > 0 and swaps[0] > 0
    leftovers = [p for p in home.rglob(".arker-write-*")]
    assert not leftovers  # a failed write leaves no temp file


def test_eagain_is_retried_then_a_conflict(vm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (vm / "home" / "user" / "f").write_bytes(b"hi")
    real = files.openat2
    fails = {"left": 3}

    def flaky(*args: object, **kwargs: object) -> int:
        if fails["left"] > 0:
            fails["left"] -= 1
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "openat2", flaky)
    assert read_file(vm, "/home/user/f", MiB) == b"hi"  # three EAGAINs, then it opens
    assert fails["left"] == 0

    fails["left"] = 10**6  # it never settles
    with pytest.raises(ArkerError) as e:
        read_file(vm, "/home/user/f", MiB)
    assert e.value.code == "conflict" and "retry" in e.value.message
    with pytest.raises(ArkerError) as e:
        write_file(vm, "/home/user/g", b"x")
    assert e.value.code == "conflict"
    assert not (vm / "home" / "user" / "g").exists()


def test_errors_the_vm_can_cause_are_mapped(vm: Path) -> None:
    home = vm / "home" / "user"
    (home / "file").write_bytes(b"x")
    (home / "dir").mkdir()
    (home / "dir" / "inner").write_bytes(b"y")
    os.symlink("loop", home / "loop")
    cases = {
        "/home/user/file/below": "not_found",  # ENOTDIR
        "/home/user/loop/x": "invalid_path",  # ELOOP
        "/home/user/dir": "invalid_path",  # a directory
    }
    for path, code in cases.items():
        with pytest.raises(ArkerError) as e:
            read_file(vm, path, MiB)
        assert e.value.code == code, (path, e.value)
    for path, code in {**cases, "/home/user/file/new/x": "not_found"}.items():
        with pytest.raises(ArkerError) as e:
            write_file(vm, path, b"z")
        assert e.value.code == code, (path, e.value)
