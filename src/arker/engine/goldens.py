"""Goldens: the base images VMs are forked from.

Each is built in a staging subvolume of the pool, sealed read-only on success
and thrown away on any failure, so a half-built golden is never forkable.

    busybox   Debian's busybox-static and a `user` account; builds in about a second
    debian    bookworm minbase + bash, coreutils, python3, ca-certificates (mmdebstrap)
    <name>    any rootfs tarball, through `import_tarball` (in _tar.py)

Building or importing onto a taken name is `conflict` (checked before any work,
and again when sealing), so callers that want "build if missing" ask
`pool.has_golden` first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from arker.engine._tar import import_tarball
from arker.engine.base import GoldenInfo, Progress
from arker.engine.pool import Pool
from arker.errors import ArkerError, ErrorCode

__all__ = ["KNOWN_GOLDENS", "build_busybox", "build_debian", "build_tarball", "import_tarball"]

USER_UID = USER_GID = 1000

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "user:x:1000:1000:user:/home/user:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
_GROUP = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"


def _build(pool: Pool, name: str, description: str, fill: Callable[[Path], None]) -> GoldenInfo:
    _not_taken(pool, name)
    staging = pool.new_golden(name)
    try:
        fill(staging)
        return pool.seal_golden(staging, name, description)
    except BaseException:
        pool.abandon_golden(staging)
        raise


Fill = Callable[[Path], None]


def build_busybox(pool: Pool, progress: Progress | None = None) -> GoldenInfo:
    """The `busybox` golden from the host's /bin/busybox (Debian's busybox-static)."""
    return _build(pool, "busybox", *_busybox(progress))


def _busybox(progress: Progress | None) -> tuple[str, Fill]:
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        raise ArkerError(ErrorCode.UNAVAILABLE, "busybox-static is not installed on this host")
    applets = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()

    def fill(root: Path) -> None:
        _note(progress, 1, 3, "making directories")
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for d, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700), ("home", 0o755)):
            (root / d).mkdir(parents=True, exist_ok=True)
            os.chmod(root / d, mode)  # explicit: mkdir's mode is cut by the umask
        shutil.copyfile(busybox, root / "bin/busybox")
        os.chmod(root / "bin/busybox", 0o755)
        _note(progress, 2, 3, f"linking {len(applets)} applets")
        for applet in [*applets, "bin/sh"]:
            link = root / applet.lstrip("/")
            if applet.strip("/") != "bin/busybox" and not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        for rel, text in (
            ("etc/passwd", _PASSWD),
            ("etc/group", _GROUP),
            ("etc/hostname", "arker\n"),
            ("etc/hosts", "127.0.0.1\tlocalhost arker\n::1\tlocalhost\n"),
        ):
            (root / rel).write_text(text)
            os.chmod(root / rel, 0o644)
        home = root / "home/user"
        home.mkdir()
        os.chown(home, USER_UID, USER_GID)
        os.chmod(home, 0o755)
        _note(progress, 3, 3, "sealing")

    return "BusyBox (static) with a `user` account", fill


# mmdebstrap's phases, in order, as its "I: " lines begin.
_DEBIAN_PHASES = (
    "chroot architecture",
    "finding correct signed-by",
    "running apt-get update",
    "downloading packages",
    "extracting archives",
    "installing essential packages",
    "installing remaining packages",
    "running --customize-hook",
    "cleaning package lists",
    "success",
)
_SETTING_UP = re.compile(r"^Setting up (\S+)")


def build_debian(
    pool: Pool,
    progress: Progress | None = None,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
) -> GoldenInfo:
    """The `debian` golden: `suite` minbase plus bash, coreutils, procps (`free`,
    `ps`, which read the VM's own size from its /proc), python3 (with pip and
    venv, so an agent can install packages into a venv), ca-certificates and a
    `user` account (uid 1000, /home/user, bash).

    Takes tens of seconds to minutes (downloads ~50 MB). With no `mirror`,
    mmdebstrap uses deb.debian.org with the suite's -updates and -security:
    the Debian sources this host's apt uses too. Progress: (phase, of N, line).
    """
    return _build(pool, "debian", *_debian(progress, suite, mirror))


def _debian(progress: Progress | None, suite: str, mirror: str | None) -> tuple[str, Fill]:
    if shutil.which("mmdebstrap") is None:
        raise ArkerError(ErrorCode.UNAVAILABLE, "mmdebstrap is not installed on this host")

    def fill(root: Path) -> None:
        argv = [
            "mmdebstrap",
            "--verbose",
            "--mode=root",
            "--format=directory",
            "--variant=minbase",
            "--include=bash,coreutils,procps,python3,python3-pip,python3-venv,"
            "ca-certificates,passwd",
            '--customize-hook=chroot "$1" groupadd -g 1000 user',
            '--customize-hook=chroot "$1" useradd -m -u 1000 -g 1000 -d /home/user '
            "-s /bin/bash user",
            '--customize-hook=echo arker > "$1/etc/hostname"',
            suite,
            str(root),
            *([mirror] if mirror else []),
        ]
        _run_with_progress(argv, progress)

    return f"Debian {suite} (minbase, python3) with a `user` account", fill


def build_tarball(name: str, out: Path, progress: Progress | None = None) -> str:
    """The known golden `name` as a rootfs tarball at `out`, built in a temp
    directory beside it (removed after), for a running server to import;
    returns its description."""
    recipes: dict[str, Callable[[Progress | None], tuple[str, Fill]]] = {
        "busybox": _busybox,
        "debian": lambda p: _debian(p, "bookworm", None),
    }
    recipe = recipes.get(name)
    if recipe is None:
        raise ArkerError(ErrorCode.NOT_FOUND, f"no known golden {name!r}")
    description, fill = recipe(progress)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        os.chmod(root, 0o755)
        fill(root)
        names = sorted(os.listdir(root))
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(out), "--", *names], check=True
        )
    return description


def _run_with_progress(argv: list[str], progress: Progress | None) -> None:
    total = len(_DEBIAN_PHASES)
    phase = 0
    tail: list[str] = []
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = [*tail[-30:], line]
            if line.startswith("I: "):
                text = line[3:]
                for i, prefix in enumerate(_DEBIAN_PHASES, start=1):
                    if text.startswith(prefix):
                        phase = max(phase, i)
                _note(progress, phase, total, text)
            elif m := _SETTING_UP.match(line):
                _note(progress, phase, total, f"setting up {m.group(1)}")
        rc = proc.wait()
    except BaseException:
        proc.kill()  # our own child, by pid
        proc.wait()
        raise
    if rc != 0:
        raise ArkerError(ErrorCode.INTERNAL, f"mmdebstrap failed ({rc}): " + "\n".join(tail[-10:]))


def _not_taken(pool: Pool, name: str) -> None:
    if pool.has_golden(name):
        raise ArkerError(ErrorCode.CONFLICT, f"golden {name!r} already exists")


def _note(progress: Progress | None, done: int, total: int | None, message: str) -> None:
    if progress is not None:
        progress(done, total, message)


KNOWN_GOLDENS: dict[str, Callable[[Pool, Progress | None], GoldenInfo]] = {
    "busybox": build_busybox,
    "debian": build_debian,
}
