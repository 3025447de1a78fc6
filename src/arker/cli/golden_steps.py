"""The steps of a golden built from steps, and their cache keys. No I/O
beyond reading the local files that COPY sends (their bytes are part of the
key): `golden_build.py` carries the steps out over the API.

    FROM <golden>        the base (first, once)
    RUN <command>        /bin/sh -c in the VM, as the current user, cwd and env
    ENV K=V [K2=V2 ...]  (or `ENV K V`) for the RUN steps after it
    WORKDIR <dir>        made (mkdir -p, as root) and the cwd of the steps after it
    COPY <src>... <dest> local files or directories, into /home/user only
    USER user|root       who the RUN steps after it run as

Each step's key is sha256 of the previous key and the step (for COPY, with
the content of what it sends), the first key being the base golden's name
and creation time: as a layer's id is, a rebuild after changing the last
step finds every earlier key and reruns only that step.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from arker.errors import ArkerError, ErrorCode

__all__ = ["Build", "Step", "base_key", "from_dockerfile", "from_options", "step_key"]

SUPPORTED = ("FROM", "RUN", "ENV", "WORKDIR", "COPY", "USER")
HOME = "/home/user"


@dataclass(frozen=True)
class Step:
    kind: Literal["RUN", "ENV", "WORKDIR", "COPY", "USER"]
    args: tuple[str, ...]  # RUN: (command,); ENV: (K=V, ...); COPY: (*sources, dest)
    where: str = ""  # for errors: "Dockerfile:3" or "--run #2"

    @property
    def changes_files(self) -> bool:
        return self.kind in ("RUN", "WORKDIR", "COPY")


@dataclass
class Build:
    base: str
    steps: list[Step]
    context: Path = field(default_factory=Path.cwd)  # where COPY sources are read from


def _bad(where: str, message: str) -> ArkerError:
    return ArkerError(ErrorCode.INVALID_REQUEST, f"{where}: {message}" if where else message)


def _env_pairs(args: list[str], where: str) -> tuple[str, ...]:
    if len(args) == 2 and "=" not in args[0]:  # the old form, ENV K V
        args = [f"{args[0]}={args[1]}"]
    for pair in args:
        key, sep, _ = pair.partition("=")
        if not sep or not key:
            raise _bad(where, f"ENV takes K=V, not {pair!r}")
    return tuple(args)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, instruction) with comments dropped and `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def from_dockerfile(path: Path) -> Build:
    """A Dockerfile limited to FROM <golden>, RUN, ENV, WORKDIR, COPY, USER;
    the first other instruction is invalid_request, naming it and its line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"cannot read {path}: {exc}") from exc
    base: str | None = None
    steps: list[Step] = []
    for number, line in _logical_lines(text):
        where = f"{path.name}:{number}"
        word, _, rest = line.partition(" ")
        instruction, rest = word.upper(), rest.strip()
        if instruction not in SUPPORTED:
            raise _bad(
                where,
                f"{word} is not supported (only {', '.join(SUPPORTED)}: "
                "a golden is a filesystem, built by runs in a VM)",
            )
        if instruction == "FROM":
            parts = rest.split()
            if base is not None or len(parts) != 1 or parts[0].startswith("-"):
                raise _bad(where, "one FROM <golden> comes first, with no options or AS")
            base = parts[0]
            continue
        if base is None:
            raise _bad(where, f"{instruction} before FROM")
        if rest.startswith("["):  # the exec (JSON) form
            try:
                parsed = json.loads(rest)
            except ValueError:
                raise _bad(where, f"{instruction} [...] is not a JSON list of strings") from None
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                raise _bad(where, f"{instruction} [...] is not a JSON list of strings")
            args = list(parsed)
            if instruction == "RUN":
                args = [shlex.join(args)]
        elif instruction == "RUN":
            args = [rest]
        else:
            args = shlex.split(rest)
        steps.append(_step(instruction, args, where))
    if base is None:
        raise _bad(path.name, "no FROM <golden>")
    return Build(base, steps, path.resolve().parent)


def from_options(base: str, ordered: list[tuple[str, str]]) -> Build:
    """--run CMD, --copy SRC:DEST, --env K=V, --workdir DIR, --user NAME, in
    the order given on the command line."""
    steps: list[Step] = []
    counts: dict[str, int] = {}
    for option, value in ordered:
        counts[option] = counts.get(option, 0) + 1
        where = f"{option} #{counts[option]}"
        if option == "--run":
            steps.append(_step("RUN", [value], where))
        elif option == "--copy":
            src, sep, dest = value.rpartition(":")
            if not sep or not src or not dest:
                raise _bad(where, f"--copy takes SRC:DEST, not {value!r}")
            steps.append(_step("COPY", [src, dest], where))
        elif option == "--env":
            steps.append(_step("ENV", [value], where))
        elif option == "--workdir":
            steps.append(_step("WORKDIR", [value], where))
        elif option == "--user":
            steps.append(_step("USER", [value], where))
        else:
            raise _bad(where, f"unknown option {option}")
    return Build(base, steps)


def _step(instruction: str, args: list[str], where: str) -> Step:
    if instruction == "RUN":
        if not args or not args[0].strip():
            raise _bad(where, "RUN needs a command")
        return Step("RUN", (args[0],), where)
    if instruction == "ENV":
        if not args:
            raise _bad(where, "ENV needs K=V")
        return Step("ENV", _env_pairs(args, where), where)
    if instruction == "WORKDIR":
        if len(args) != 1 or not args[0].startswith("/"):
            raise _bad(where, "WORKDIR takes one absolute directory")
        return Step("WORKDIR", (posixpath.normpath(args[0]),), where)
    if instruction == "USER":
        if len(args) != 1 or args[0] not in ("user", "root"):
            raise _bad(where, "USER takes user or root (the users a VM runs commands as)")
        return Step("USER", (args[0],), where)
    if instruction == "COPY":
        if len(args) < 2 or any(a.startswith("--") for a in args):
            raise _bad(where, "COPY takes <src>... <dest>, with no options")
        return Step("COPY", tuple(args), where)
    raise _bad(where, f"{instruction} is not supported")


def base_key(name: str, created_at: str) -> str:
    return hashlib.sha256(f"golden\0{name}\0{created_at}".encode()).hexdigest()


def step_key(previous: str, step: Step, context: Path) -> str:
    h = hashlib.sha256()
    h.update(previous.encode())
    h.update(json.dumps([step.kind, *step.args]).encode())
    if step.kind == "COPY":
        for source in step.args[:-1]:
            _hash_tree(h, context / source)
    return h.hexdigest()


def _hash_tree(h: hashlib._Hash, path: Path) -> None:
    """Names, modes and bytes of everything at `path`, in a stable order."""
    if not path.exists():
        raise ArkerError(ErrorCode.NOT_FOUND, f"COPY: no {path}")
    items = [path] if not path.is_dir() else [path, *sorted(path.rglob("*"))]
    for item in items:
        st = item.lstat()
        h.update(f"{item.relative_to(path.parent)}\0{st.st_mode:o}\0".encode())
        if item.is_symlink():
            h.update(os.readlink(item).encode())
        elif item.is_file():
            with item.open("rb") as f:
                while piece := f.read(1 << 20):
                    h.update(piece)


def copy_dest(dest: str, source: Path, cwd: str, many: bool) -> str:
    """Where a COPY source lands in the VM (Docker's rules: a dest ending in
    `/`, or several sources, is a directory the sources go into)."""
    if not dest.startswith("/"):
        dest = posixpath.join(cwd, dest)
    into_dir = dest.endswith("/") or many
    clean = posixpath.normpath(dest)
    target = posixpath.join(clean, source.name) if into_dir and not source.is_dir() else clean
    if not (target == HOME or target.startswith(HOME + "/")):
        raise ArkerError(
            ErrorCode.INVALID_PATH, f"COPY into {target}: only under {HOME} (the files API's rule)"
        )
    return target
