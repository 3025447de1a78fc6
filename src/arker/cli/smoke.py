"""`arker smoke`: the conformance smoke test, one table for one or more deployments."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from arker.cli._output import cli_errors, err_console, out_console, print_json

__all__ = ["register"]


def _cell(ok: bool | None, latency_ms: float | None) -> str:
    if ok is None:
        return "[dim]skipped[/]"
    mark = "[green]ok[/]" if ok else "[red bold]FAIL[/]"
    return f"{mark} {latency_ms:.0f} ms" if latency_ms is not None else mark


def smoke(
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="ARKER_API_KEY", show_default=False)
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", envvar="ARKER_BASE_URL", help="With any /api prefix."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", envvar="ARKER_SOURCE_VM", help="A golden name or VM id to fork."),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            envvar="ARKER_SMOKE_TARGETS",
            help='JSON list of {"name", "baseUrl", "source"[, "apiKey"]}; beats the others.',
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Check deployments over raw HTTP against the wire contract.

    Forks the source, runs a command in the foreground and one in the
    background, writes and reads a file, deletes the VM; every answer must
    match contract/openapi.json. Exits 1 if any check fails.
    """
    from arker.smoke import CHECKS, run_smoke, targets_from_env

    chosen = targets_from_env(
        api_key=api_key, base_url=base_url, source=source, targets_json=targets
    )
    reports = run_smoke(chosen, timeout_s=timeout)
    if as_json:
        print_json(
            [
                {
                    "name": r.target.name,
                    "base_url": r.target.base_url,
                    "ok": r.ok,
                    "leaked_vms": r.leaked_vms,
                    "checks": [vars(c) for c in r.results],
                }
                for r in reports
            ]
        )
    else:
        table = Table(title="arker smoke")
        table.add_column("check")
        for r in reports:
            header = escape(r.target.name)
            if r.target.name != r.target.base_url:
                header += f"\n[dim]{escape(r.target.base_url)}[/]"
            table.add_column(header)
        for i, check in enumerate(CHECKS):
            table.add_row(
                check, *(_cell(r.results[i].ok, r.results[i].latency_ms) for r in reports)
            )
        out_console.print(table)
        for r in reports:
            for c in r.results:
                if c.ok is False:
                    out_console.print(
                        f"[red]FAIL[/] {escape(r.target.name)} {c.name}: {escape(c.detail)}"
                    )
            for vm_id in r.leaked_vms:
                out_console.print(
                    f"[red]LEAK[/] {escape(r.target.name)}: could not delete VM {escape(vm_id)}"
                )
    if not all(r.ok for r in reports):
        failed = sum(1 for r in reports for c in r.results if c.ok is False)
        err_console.print(f"smoke: {failed} check(s) failed")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `arker smoke` to the app."""
    app.command()(cli_errors(smoke))
