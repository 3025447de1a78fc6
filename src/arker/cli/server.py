"""Server-side commands: `arker serve` and `arker keys create|ls|revoke`.
Server modules are imported inside the commands, so the client-side commands
stay quick to start."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

__all__ = ["create_key", "register", "revoke_key"]

T = TypeVar("T")

DataDir = Annotated[str, typer.Option("--data-dir", help="Where VMs and the SQLite database live.")]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="ARKER_DATABASE_URL",
        help="postgresql+asyncpg://... ; default: SQLite in the data dir.",
    ),
]

keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys.")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8740,
    data_dir: DataDir = "/var/lib/arker",
    database_url: DbUrl = None,
    region: Annotated[str, typer.Option(help="Reported in every VM.")] = "local",
    api_prefix: Annotated[str, typer.Option(help="Also serve under this prefix, e.g. /api.")] = "",
    burst_suffix: Annotated[
        str | None, typer.Option(help="Mint VM ids as <ULID>_<suffix>.")
    ] = None,
    max_file_bytes: Annotated[int, typer.Option(help="Largest file PUT.")] = 1024 * 1024 * 1024,
    overcommit: Annotated[
        float,
        typer.Option(
            help="Refuse a fork (429 quota_exceeded) once the VMs' memory limits "
            "would pass this many times the host's memory.",
            min=0.01,
        ),
    ] = 10.0,
    org_max_vms: Annotated[
        int | None, typer.Option(help="Most live VMs one org may hold (default: no limit).", min=0)
    ] = None,
    org_max_memory_mib: Annotated[
        int | None,
        typer.Option(
            help="Most VM memory (MiB of limits) one org may hold (default: no limit).", min=0
        ),
    ] = None,
    run_output_keep_mib: Annotated[
        float,
        typer.Option(
            help="Output kept in the database per run and stream (head and tail), in MiB."
        ),
    ] = 1.0,
    run_retention: Annotated[
        str,
        typer.Option(help="Ended runs are deleted after this long: 7d, 12h, 30m, 45s; 0 keeps."),
    ] = "7d",
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    vm_disk_mib: Annotated[
        int, typer.Option(help="A new VM's disk quota in MiB (0: no quota).")
    ] = 10240,
    vm_disk_max_mib: Annotated[
        int, typer.Option(help="The largest disk quota a fork may ask for, in MiB.")
    ] = 102400,
    vm_max_cpu: Annotated[
        float | None,
        typer.Option(help="The most CPUs a fork may ask for (default: the host's).", min=0.25),
    ] = None,
    vm_max_memory_mib: Annotated[
        int | None,
        typer.Option(
            help="The largest memory limit a fork may ask for, in MiB (default: the host's).",
            min=128,
        ),
    ] = None,
    vm_max_pids: Annotated[
        int, typer.Option(help="The most processes a fork may ask for.", min=16)
    ] = 32768,
    pool_reserve_mib: Annotated[
        int, typer.Option(help="Refuse forks and runs below this much free pool space (MiB).")
    ] = 2048,
    egress: Annotated[
        str,
        typer.Option(
            "--egress",
            metavar="on|off",
            help="Whether a VM forked from a golden, with no network policy of its own, "
            "reaches the internet (never the host, other VMs or private ranges).",
        ),
    ] = "on",
    userns: Annotated[
        str,
        typer.Option(
            "--userns",
            metavar="on|off",
            help="Run each VM in a user namespace of its own, root in it an unprivileged "
            "host uid (on where the kernel can idmap the pool; off: root in a VM is host "
            "root, as before).",
        ),
    ] = "on",
    preview_domain: Annotated[
        str | None,
        typer.Option(
            "--preview-domain",
            metavar="DOMAIN",
            help="Relay requests for Host {port}-{vm_id}.DOMAIN to that port of that VM "
            "(point a wildcard DNS name at this server).",
        ),
    ] = None,
    default_ttl_s: Annotated[
        int | None,
        typer.Option(
            help="A fork that sends no ttl_s is deleted after this many seconds "
            "(default: VMs live until deleted).",
            min=1,
        ),
    ] = None,
    default_idle_stop_s: Annotated[
        int | None,
        typer.Option(
            help="A fork that sends no idle_stop_s is stopped (files kept) after this many "
            "seconds with nothing to do (default: never).",
            min=1,
        ),
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            metavar="HOST:PORT",
            help="Also serve /metrics here, with no key (the API port's needs an admin key).",
        ),
    ] = None,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Serve as an API replica of a cluster: no engine here, VMs on the host "
            "agents (`arker host`) registered in --database-url (PostgreSQL).",
        ),
    ] = False,
    blob_url: Annotated[
        str | None,
        typer.Option(
            "--blob-url", envvar="ARKER_BLOB_URL", help="s3://bucket/prefix (with --cluster)."
        ),
    ] = None,
    host_token_file: Annotated[
        str | None,
        typer.Option(
            "--host-token-file",
            envvar="ARKER_HOST_TOKEN_FILE",
            help="The host token the host agents take (with --cluster).",
        ),
    ] = None,
) -> None:
    """Serve the Arker API over this host's engine."""
    from arker.server.config import Settings
    from arker.server.main import serve as run_server

    if egress not in ("on", "off"):
        raise typer.BadParameter("--egress takes on or off", param_hint="--egress")
    if userns not in ("on", "off"):
        raise typer.BadParameter("--userns takes on or off", param_hint="--userns")
    host_token = None
    if cluster:
        if not (database_url or "").startswith("postgresql"):
            raise typer.BadParameter("a cluster needs PostgreSQL", param_hint="--database-url")
        if not host_token_file:
            raise typer.BadParameter("a cluster replica needs it", param_hint="--host-token-file")
        with open(host_token_file) as f:
            host_token = f.read().strip()
    settings = Settings(
        egress=egress == "on",
        user_namespaces=userns == "on",
        data_dir=data_dir,
        database_url=database_url,
        region=region,
        api_prefix=api_prefix,
        burst_suffix=burst_suffix,
        max_file_bytes=max_file_bytes,
        overcommit=overcommit,
        org_max_vms=org_max_vms,
        org_max_memory_mib=org_max_memory_mib,
        vm_disk_mib=vm_disk_mib or None,
        vm_disk_max_mib=vm_disk_max_mib,
        vm_max_cpu=vm_max_cpu,
        vm_max_memory_mib=vm_max_memory_mib,
        vm_max_pids=vm_max_pids,
        pool_reserve_mib=pool_reserve_mib,
        stored_output_bytes=max(0, int(run_output_keep_mib * 1024 * 1024)),
        run_retention_s=_duration(run_retention),
        preview_domain=preview_domain.strip(".").lower() if preview_domain else None,
        default_ttl_s=default_ttl_s,
        default_idle_stop_s=default_idle_stop_s,
        cluster=cluster,
        blob_url=blob_url,
        host_token=host_token,
    )
    run_server(settings, host=host, port=port, log_level=log_level, metrics_listen=metrics_listen)


def _with_db(data_dir: str, database_url: str | None, fn: Callable[..., Awaitable[T]]) -> T:
    from arker.server.config import Settings
    from arker.server.store import Database

    async def go() -> T:
        db = Database(Settings(data_dir=data_dir, database_url=database_url).db_url)
        try:
            await db.migrate()
            return await fn(db)
        finally:
            await db.close()

    return asyncio.run(go())


def _duration(text: str) -> float:
    from arker._durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--run-retention") from None


def create_key(
    data_dir: str | os.PathLike[str],
    name: str | None = None,
    org: str = "default",
    database_url: str | None = None,
    admin: bool = False,
) -> tuple[str, str]:
    """Make a key as `arker keys create` does; return (key_id, secret)."""
    from arker.server.auth import create_key as create

    record, secret = _with_db(
        str(data_dir), database_url, lambda db: create(db, org, name, admin=admin)
    )
    return record.id, secret


def revoke_key(
    data_dir: str | os.PathLike[str], key_id: str, database_url: str | None = None
) -> bool:
    """Revoke a key as `arker keys revoke` does; False when there is no such key."""
    from arker.server.auth import revoke_key as revoke

    return _with_db(str(data_dir), database_url, lambda db: revoke(db, key_id))


def _when(unix_s: float | None) -> str:
    return "-" if unix_s is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="The org the key acts for.")] = "default",
    name: Annotated[str | None, typer.Option(help="A label for people.")] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="May also read /metrics (every org's numbers).")
    ] = False,
    data_dir: DataDir = "/var/lib/arker",
    database_url: DbUrl = None,
) -> None:
    """Make a new key; the secret is printed once, on the last line."""
    key_id, secret = create_key(
        data_dir, name=name, org=org, database_url=database_url, admin=admin
    )
    kind = "admin key" if admin else "key"
    typer.echo(f"created {kind} {key_id} for org {org} (shown once, store it now):")
    typer.echo(secret)


@keys_app.command("ls")
def keys_ls(data_dir: DataDir = "/var/lib/arker", database_url: DbUrl = None) -> None:
    """List keys (no secrets)."""
    from arker.server.auth import list_keys

    records = _with_db(data_dir, database_url, list_keys)
    typer.echo(
        f"{'ID':<22} {'PREFIX':<17} {'ORG':<16} {'NAME':<16} {'ADMIN':<6} {'CREATED':<21} REVOKED"
    )
    for r in records:
        typer.echo(
            f"{r.id:<22} {r.prefix + '...':<17} {r.org:<16} {r.name or '-':<16} "
            f"{'yes' if r.admin else '-':<6} {_when(r.created_at):<21} {_when(r.revoked_at)}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, from `arker keys ls`.")],
    data_dir: DataDir = "/var/lib/arker",
    database_url: DbUrl = None,
) -> None:
    """Revoke a key: requests with it get 401 within seconds."""
    if not revoke_key(data_dir, key_id, database_url):
        typer.echo(f"no key with id {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
