"""The client commands of `arker` on VMs and runs: fork, run, logs, status, cancel, ls,
get, restart, ttl, rm (files: cli/files.py).

They are thin: each builds an `Arker` client configured like the SDK
(--api-key/--region/--base-url, else ARKER_API_KEY, ARKER_REGION,
ARKER_BASE_URL) and prints what it returns. Data (ids, command output, file
bytes, JSON) goes to stdout; notes for people go to stderr.
"""

from __future__ import annotations

import enum
import shlex
import sys
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from arker.cli._connect import ApiKey, BaseUrl, Json, Region, RunId, VmId, connect
from arker.cli._output import (
    cli_errors,
    err_console,
    fail,
    out_console,
    print_json,
    write_stderr,
    write_stdout,
)
from arker.cli.follow import exit_with, follow, notes
from arker.cli.lifecycle import labels_arg, seconds_arg

__all__ = ["register"]

# The contract caps a run's stdin at 8 MiB decoded.
STDIN_MAX_BYTES = 8 * 1024 * 1024


class RunUser(enum.StrEnum):
    user = "user"
    root = "root"


_COLUMNS = (
    "vm_id",
    "name",
    "base_image",
    "state",
    "durable",
    "parent_id",
    "created (UTC)",
    "expires (UTC)",
    "labels",
)


def _vm_doc(vm: Any) -> dict[str, Any]:
    doc: dict[str, Any] = vm.model_dump(mode="json")
    return doc


def fork(
    source: Annotated[str, typer.Argument(help="A golden name or a VM id.")],
    name: Annotated[str | None, typer.Option("--name", help="Name (and hostname).")] = None,
    durable: Annotated[bool, typer.Option("--durable", help="Survive host crashes.")] = False,
    disk_mib: Annotated[
        int | None,
        typer.Option("--disk-mib", help="Disk quota in MiB; default: the parent's or server's."),
    ] = None,
    cpu: Annotated[
        float | None,
        typer.Option("--cpu", help="CPUs (0.25 and up); default: the parent's or server's."),
    ] = None,
    memory: Annotated[
        int | None,
        typer.Option(
            "--memory", metavar="MIB", help="Memory in MiB; default: the parent's or server's."
        ),
    ] = None,
    pids: Annotated[
        int | None,
        typer.Option("--pids", help="Most processes at once; default: the parent's or server's."),
    ] = None,
    no_egress: Annotated[
        bool,
        typer.Option("--no-egress", help="No network out (default: the parent's or server's)."),
    ] = False,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="NAME",
            help="Reach only this domain (*.example.org too) or IPv4 CIDR; repeat for more.",
        ),
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl",
            metavar="DURATION",
            help="Delete it after this long: 1h, 30m, 7d, seconds; 0: never "
            "(default: the server's).",
        ),
    ] = None,
    idle_stop: Annotated[
        str | None,
        typer.Option(
            "--idle-stop",
            metavar="DURATION",
            help="Stop it (files kept) after this long with nothing to do; 0: never "
            "(default: the server's).",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label", metavar="KEY=VALUE", help="A label to find it by; repeat for more."
        ),
    ] = None,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Fork a golden or a VM; print the new VM's id."""
    from arker.client._base import KEEP

    lifecycle: dict[str, Any] = {
        "ttl_s": KEEP if ttl is None else seconds_arg(ttl, "--ttl"),
        "idle_stop_s": KEEP if idle_stop is None else seconds_arg(idle_stop, "--idle-stop"),
        "labels": labels_arg(label, "--label"),
    }
    sizes = {"disk_mib": disk_mib, "cpu": cpu, "memory_mib": memory, "pids": pids}
    resources = {k: v for k, v in sizes.items() if v is not None} or None
    if no_egress and allow:
        fail("invalid_request", "--no-egress and --allow contradict each other")
    network: dict[str, Any] | None = None
    if no_egress:
        network = {"egress": False}
    elif allow:
        network = {"egress": True, "allow": list(allow)}
    with connect(api_key, region, base_url) as arker:
        child = arker.vm(source).fork(
            name=name, durable=durable, resources=resources, network=network, **lifecycle
        )
        print(child.vm_id)


def _read_stdin(stdin_file: Path | None, no_stdin: bool) -> bytes | None:
    if stdin_file is not None:
        with stdin_file.open("rb") as f:
            data = f.read(STDIN_MAX_BYTES + 1)
    elif no_stdin or sys.stdin is None or sys.stdin.isatty():
        return None
    else:
        data = sys.stdin.buffer.read(STDIN_MAX_BYTES + 1)
    if len(data) > STDIN_MAX_BYTES:
        fail("payload_too_large", "stdin is over 8 MiB; copy it in with `arker cp` instead")
    return data or None


def _parse_env(pairs: list[str]) -> dict[str, str] | None:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail("invalid_request", f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env or None


def run(
    vm: VmId,
    command: Annotated[
        list[str], typer.Argument(help="The command, after `--`; run by /bin/sh -c.")
    ],
    background: Annotated[
        bool, typer.Option("--background", "-b", help="Start it and print the run id.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Kill it after S seconds.", min=0.001)
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE; repeatable.")
    ] = None,
    cwd: Annotated[str | None, typer.Option("--cwd", help="Working directory.")] = None,
    user: Annotated[RunUser | None, typer.Option("--user", help="Run as (default user).")] = None,
    stdin_file: Annotated[
        Path | None, typer.Option("--stdin", help="Feed this file to the command's stdin.")
    ] = None,
    no_stdin: Annotated[
        bool, typer.Option("--no-stdin", "-n", help="Do not pass this terminal's stdin on.")
    ] = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Run a command in a VM; its output (as it arrives) and exit status become arker's.

    Several words are the command's argv, exactly, as `docker exec` takes
    them: `arker run VM -- sh -c 'exit 3'`. One word is a shell command line:
    `arker run VM -- 'ls | wc -l'`. A timeout exits 124, a cancelled run (or
    Ctrl-C, which cancels it) 130.
    """
    data = _read_stdin(stdin_file, no_stdin)
    line = command[0] if len(command) == 1 else shlex.join(command)
    with connect(api_key, region, base_url, 60.0) as arker:
        handle = arker.vm(vm).run(
            line,
            background=True,
            timeout_s=timeout,
            env=_parse_env(env or []),
            cwd=cwd,
            stdin=data,
            user=None if user is None else user.value,
        )
        if background:
            print(handle.run_id)
            return
        status = follow(handle, cancel_on_interrupt=True)
    exit_with(status, timeout)


def logs(
    vm: VmId,
    run_id: RunId,
    follow_it: Annotated[
        bool, typer.Option("--follow", "-f", help="Go on printing until the run ends.")
    ] = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """A run's output: what there is so far, or with --follow all of it as it
    comes, then the run's exit status as arker's (Ctrl-C stops following)."""
    with connect(api_key, region, base_url, 60.0) as arker:
        handle = arker.vm(vm).run_handle(run_id)
        if follow_it:
            exit_with(follow(handle, cancel_on_interrupt=False))
        status = handle.status()
    write_stdout(status.stdout)
    write_stderr(status.stderr)
    notes(status)


def _print_status(status: Any, as_json: bool) -> None:
    if as_json:
        doc = {
            k: getattr(status, k)
            for k in status.__dataclass_fields__
            if k not in ("stdout", "stderr")
        }
        doc["stdout"] = status.stdout_text
        doc["stderr"] = status.stderr_text
        print_json(doc)
        return
    write_stdout(status.stdout)
    write_stderr(status.stderr)
    notes(status)
    exit_code = "-" if status.exit_code is None else status.exit_code
    line = f"state: {status.state}  exit code: {exit_code}  retries: {status.retry_count}"
    if status.failure_reason:
        line += f"  reason: {status.failure_reason}"
    err_console.print(line)


def status(
    vm: VmId,
    run_id: RunId,
    as_json: Json = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Show a run: its output so far on stdout/stderr, then its state."""
    with connect(api_key, region, base_url) as arker:
        _print_status(arker.vm(vm).run_status(run_id), as_json)


def cancel(
    vm: VmId,
    run_id: RunId,
    as_json: Json = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Cancel a run (its whole process tree is killed) and show where it stopped."""
    with connect(api_key, region, base_url) as arker:
        _print_status(arker.vm(vm).cancel_run(run_id), as_json)


class VmState(enum.StrEnum):
    running = "running"
    stopped = "stopped"
    lost = "lost"


def _utc(when: Any) -> str:
    return "" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ls(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label", metavar="KEY=VALUE", help="Only VMs with this label; repeat: all of them."
        ),
    ] = None,
    state: Annotated[
        VmState | None, typer.Option("--state", help="Only VMs in this state.")
    ] = None,
    parent: Annotated[
        str | None, typer.Option("--parent", metavar="VM", help="Only VMs forked from this one.")
    ] = None,
    as_json: Json = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """List your VMs, newest first (the filters narrow the list and its total)."""
    with connect(api_key, region, base_url) as arker:
        page = arker.list(
            limit=limit,
            offset=offset,
            label=labels_arg(label, "--label"),
            parent_id=parent,
            state=None if state is None else state.value,
        )
    if as_json:
        print_json({"items": [_vm_doc(vm) for vm in page.items], "total": page.total})
        return
    table = Table(caption=f"{len(page.items)} of {page.total}", caption_justify="left")
    for column in _COLUMNS:
        # Ids are what people copy: never fold them across lines.
        table.add_column(column, no_wrap=column.endswith("id"), overflow="fold")
    for vm in page.items:
        table.add_row(
            vm.vm_id,
            vm.name or "",
            vm.base_image,
            vm.state,
            "yes" if vm.durable else "",
            vm.parent_id or "",
            _utc(vm.created_at),
            _utc(vm.expires_at),
            ",".join(f"{k}={v}" for k, v in (vm.labels or {}).items()),
        )
    out_console.print(table)


def get(
    vm: VmId,
    as_json: Json = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Show one VM."""
    with connect(api_key, region, base_url) as arker:
        doc = _vm_doc(arker.get(vm))
    if as_json:
        print_json(doc)
        return
    table = Table(show_header=False, box=None)
    for key, value in doc.items():
        table.add_row(key, "" if value is None else str(value))
    out_console.print(table)


def restart(
    vm: VmId,
    as_json: Json = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Kill every process of a VM (a fork bomb too) and start it again; its files stay."""
    with connect(api_key, region, base_url) as arker:
        doc = _vm_doc(arker.vm(vm).restart())
    if as_json:
        print_json(doc)
        return
    print(f"{doc['vm_id']} {doc['state']}")


def ttl(
    vm: VmId,
    duration: Annotated[
        str, typer.Argument(help="Delete it this long from now: 1h, 30m, 7d, seconds; 0: never.")
    ],
    as_json: Json = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Set when a VM is deleted, counted from now (sooner or later than before)."""
    with connect(api_key, region, base_url) as arker:
        info = arker.vm(vm).update(ttl_s=seconds_arg(duration, "DURATION"))
    if as_json:
        print_json(_vm_doc(info))
        return
    when = _utc(info.expires_at)
    print(f"{info.vm_id} expires {when} UTC" if when else f"{info.vm_id} never expires")


def rm(
    vms: Annotated[list[str], typer.Argument(metavar="VM...", help="The VM ids.")],
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Delete VMs (their processes are killed and their storage freed)."""
    from arker import ArkerError

    failed = 0
    with connect(api_key, region, base_url) as arker:
        for vm_id in vms:
            # Keep going: one missing VM should not leave the others alive.
            try:
                arker.vm(vm_id).delete()
            except ArkerError as exc:
                failed += 1
                sys.stderr.write(f"error: {exc.code}: {vm_id}: {exc.message}\n")
                continue
            print(vm_id)
    if failed:
        raise typer.Exit(1)


_COMMANDS = (fork, run, logs, status, cancel, ls, get, restart, ttl, rm)


def register(app: typer.Typer) -> None:
    """Add the client commands to the `arker` app."""
    for func in _COMMANDS:
        app.command()(cli_errors(func))
