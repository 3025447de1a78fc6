"""Fixtures for the isolation and run tests: a busybox rootfs, a bare VM
(jail + runner on a plain directory) and a NamespaceEngine on a real btrfs
pool. Every fixture removes what it made, by id, even when a test fails.

Test files import what they use from here (`from conftest_exec import ...`);
pytest puts this directory on sys.path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from arker.engine import _native, jail
from arker.engine._cgroups import Cgroups
from arker.engine.base import Limits, RunInfo, RunSpec
from arker.engine.host import NamespaceEngine
from arker.engine.runner import Runner

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def make_busybox_rootfs(root: Path) -> Path:
    """A minimal rootfs: static busybox with its applet links, users root and
    user (1000), /home/user owned by 1000."""
    for d in ("bin", "etc", "home/user", "root", "tmp", "proc", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\ntty:x:5:\nuser:x:1000:\n")
    os.chown(root / "home" / "user", 1000, 1000)
    os.chmod(root / "tmp", 0o1777)
    return root


@dataclass
class BareVm:
    """A VM without the pool: PID 1 on a plain directory, plus a runner."""

    vm_id: str
    root: Path
    cgroups: Cgroups
    runner: Runner
    init: jail.InitProcess

    def run(self, command: str, **kw: object) -> RunInfo:
        run_id = uuid.uuid4().hex[:12]
        self.runner.start(self.vm_id, run_id, RunSpec(command=command, **kw), self.init)  # type: ignore[arg-type]
        info = self.runner.wait(self.vm_id, run_id, 60)
        self.runner.forget(self.vm_id, run_id)
        return info


@pytest.fixture
def bare_vm(tmp_path: Path) -> Iterator[BareVm]:
    data = tmp_path / "data"
    data.mkdir()
    root = make_busybox_rootfs(tmp_path / "rootfs")
    cgroups = Cgroups(data)
    helper = _native.helper_path(data)
    vm_id = "bare-" + uuid.uuid4().hex[:8]
    try:
        init = jail.start_vm(
            helper, cgroups, vm_id, root, hostname="bare", limits=Limits(memory_bytes=256 << 20)
        )
        yield BareVm(vm_id, root, cgroups, Runner(cgroups), init)
    finally:
        cgroups.remove_all()


def add_busybox_golden(engine: NamespaceEngine) -> None:
    if engine.pool.has_golden("busybox"):
        return
    staging = engine.pool.new_golden("busybox")
    make_busybox_rootfs(staging)
    engine.pool.seal_golden(staging, "busybox", "busybox test golden")


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="session")
def engine(engine_dir: Path) -> Iterator[NamespaceEngine]:
    eng = NamespaceEngine(engine_dir, image_size_bytes=4 << 30, tmp_size_bytes=64 << 20)
    eng.open()
    try:
        eng.build_golden("busybox")  # the storage half's golden, run by this half's jail
        yield eng
    finally:
        for vm_id in eng.vm_ids():
            eng.delete(vm_id)
        eng.close()


@pytest.fixture
def make_vm(engine: NamespaceEngine) -> Iterator[object]:
    made: list[str] = []

    def make(
        hostname: str = "testvm", limits: Limits | None = None, source: str = "busybox"
    ) -> str:
        vm_id = "vm-" + uuid.uuid4().hex[:10]
        made.append(vm_id)
        engine.fork(source, vm_id, hostname=hostname, limits=limits)
        return vm_id

    try:
        yield make
    finally:
        for vm_id in made:
            engine.delete(vm_id)


@pytest.fixture
def vm(make_vm: object) -> str:
    return make_vm()  # type: ignore[operator,no-any-return]


def run(engine: NamespaceEngine, vm_id: str, command: str, **kw: object) -> RunInfo:
    """A foreground run: start, wait, forget."""
    run_id = uuid.uuid4().hex[:12]
    engine.start_run(vm_id, run_id, RunSpec(command=command, **kw))  # type: ignore[arg-type]
    info = engine.wait_run(vm_id, run_id, 120)
    engine.forget_run(vm_id, run_id)
    return info
