"""Build a golden from steps over the API: fork the base, carry out the steps
(golden_steps.py) in that VM, publish it, delete it.

The cache is VMs: after each step that changes files, a fork of the build VM
(constant time) is kept with the label `arker.build/layer=<step key>`. A
rebuild looks each step's key up, in order, while it finds one, and forks
the last layer found: only the steps after it run again. Layers are VMs of
the building key's org, stopped; `arker goldens build --no-cache` neither
reads nor writes them, and deleting them (`arker rm`, by label) empties it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from arker.cli.golden_steps import HOME, Build, Step, base_key, copy_dest, step_key
from arker.errors import ArkerError, ErrorCode

if TYPE_CHECKING:
    from arker import Arker, Computer, Golden

__all__ = ["LAYER_LABEL", "Built", "build_from_steps"]

LAYER_LABEL = "arker.build/layer"
OUTPUT_TAIL_BYTES = 2000


@dataclass(frozen=True)
class Built:
    golden: Golden
    ran: int  # steps carried out
    cached: int  # steps found in the cache


def build_from_steps(
    arker: Arker,
    name: str,
    build: Build,
    *,
    for_all: bool = False,
    cache: bool = True,
    step_timeout_s: float = 1800.0,
    say: Callable[[str], None] = lambda _: None,
) -> Built:
    """Build and publish the golden `name`; the steps' failures are raised
    (a RUN that exits non-zero: invalid_request with its exit code and the
    tail of its output), and nothing is published then."""
    base = next((g for g in arker.goldens() if g.name == build.base), None)
    if base is None:
        raise ArkerError(ErrorCode.NOT_FOUND, f"FROM {build.base}: no such golden")
    key = base_key(base.name, base.created_at.isoformat())
    source = build.base  # a golden, then the last layer found
    env: dict[str, str] = {}
    cwd, user = HOME, "user"
    work: Computer | None = None
    ran = cached = 0
    total = sum(1 for s in build.steps if s.changes_files)
    try:
        for step in build.steps:
            key = step_key(key, step, build.context)
            if step.kind == "ENV":
                env.update(dict(pair.split("=", 1) for pair in step.args))
                continue
            if step.kind == "USER":
                user = step.args[0]
                continue
            if step.kind == "WORKDIR":
                cwd = step.args[0]
            if work is None and cache:
                layer = _layer(arker, key)
                if layer is not None:
                    source, cached = layer, cached + 1
                    say(f"[{ran + cached}/{total}] {_show(step)}: cached")
                    continue
            if work is None:
                work = arker.vm(source).fork(name="golden-build", network={"egress": True})
            say(f"[{ran + cached + 1}/{total}] {_show(step)}")
            _carry_out(work, step, env, cwd, user, build.context, step_timeout_s)
            ran += 1
            if cache:
                work.fork(name="golden-layer", labels={LAYER_LABEL: key}, ttl_s=None)
        description = f"built from {build.base} in {len(build.steps)} steps"
        if work is None and source == build.base:  # no step changed a file
            work = arker.vm(source).fork(name="golden-build")
        from_vm = work.vm_id if work is not None else source
        golden = arker.publish_golden(name, from_vm, description=description, for_all=for_all)
    finally:
        if work is not None:
            work.delete()
    return Built(golden, ran, cached)


def _layer(arker: Arker, key: str) -> str | None:
    page = arker.list(label={LAYER_LABEL: key}, limit=10)
    found = [vm.vm_id for vm in page.items if vm.state != "lost"]
    return found[0] if found else None


def _show(step: Step) -> str:
    text = " ".join(step.args)
    return f"{step.kind} {text[:70]}{'...' if len(text) > 70 else ''}"


def _carry_out(
    work: Computer,
    step: Step,
    env: dict[str, str],
    cwd: str,
    user: Literal["user", "root"] | str,
    context: Path,
    timeout_s: float,
) -> None:
    if step.kind == "WORKDIR":
        # As root, as Docker does; under /home/user, the user's (as its home is).
        own = f" && chown 1000:1000 {shlex.quote(cwd)}" if cwd.startswith(HOME) else ""
        _run(work, step, f"mkdir -p {shlex.quote(cwd)}{own}", {}, "/", "root", timeout_s)
    elif step.kind == "RUN":
        _run(work, step, step.args[0], env, cwd, user, timeout_s)
    elif step.kind == "COPY":
        sources = step.args[:-1]
        for source in sources:
            local = context / source
            target = copy_dest(step.args[-1], local, cwd, len(sources) > 1)
            if local.is_dir():
                work.fs.upload_dir(local, target)
            else:
                parent = target.rsplit("/", 1)[0]
                if parent != HOME:
                    work.fs.mkdir(parent, parents=True)
                work.sync.write_file(target, local.read_bytes())


def _run(
    work: Computer,
    step: Step,
    command: str,
    env: dict[str, str],
    cwd: str,
    user: str,
    timeout_s: float,
) -> None:
    as_user: Literal["user", "root"] = "root" if user == "root" else "user"
    result = work.run(command, env=env, cwd=cwd, user=as_user, timeout_s=timeout_s)
    if result.type == "completed" and result.exit_code == 0:
        return
    if result.type == "started":  # a foreground run never answers so
        raise ArkerError(ErrorCode.INTERNAL, f"{step.where}: the run did not wait")
    tail = (result.stderr or result.stdout or b"")[-OUTPUT_TAIL_BYTES:]
    said = tail.decode("utf-8", errors="replace").strip()
    how = f"exited {result.exit_code}" if result.type == "completed" else result.type
    raise ArkerError(
        ErrorCode.INVALID_REQUEST, f"{step.where}: {_show(step)} {how}: {said or '(no output)'}"
    )
