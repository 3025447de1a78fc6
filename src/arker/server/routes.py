"""HTTP routes: parse, call the service, serialise. No rules here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from arker import __version__
from arker import _types as t
from arker.server.auth import Authenticator
from arker.server.events import parse_offsets
from arker.server.fs import accepts_zstd
from arker.server.run_control import Window
from arker.server.service import Service

__all__ = ["metrics_response", "router"]

router = APIRouter()

KEY_PATTERN = r"^[\x21-\x7e]+$"
VmId = Annotated[str, Path(min_length=1, max_length=128)]
RunId = Annotated[str, Path(min_length=1, max_length=128)]
FilePath = Annotated[str, Query(min_length=1, max_length=4096)]
IdemKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=KEY_PATTERN)
]
UploadId = Annotated[
    str | None, Header(alias="Upload-Id", min_length=1, max_length=255, pattern=KEY_PATTERN)
]


async def _service(request: Request) -> Service:
    # async, though it awaits nothing: FastAPI runs a plain function dependency
    # in a worker thread, a hop to and back on every request.
    svc: Service = request.app.state.service
    return svc


async def _org(request: Request) -> str:
    auth: Authenticator = request.app.state.auth
    org = await auth.org_for(request.headers.get("authorization"))
    request.state.org = org  # for the access log
    return org


async def _caller(request: Request) -> tuple[str, bool]:
    auth: Authenticator = request.app.state.auth
    org, admin = await auth.caller(request.headers.get("authorization"))
    request.state.org = org  # for the access log
    return org, admin


Svc = Annotated[Service, Depends(_service)]
Org = Annotated[str, Depends(_org)]
Caller = Annotated[tuple[str, bool], Depends(_caller)]
GoldenName = Annotated[str, Path(min_length=1, max_length=63)]
OperationId = Annotated[str, Path(min_length=1, max_length=128, pattern=KEY_PATTERN)]


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


@router.get("/healthz")
async def health(svc: Svc) -> Response:
    return _json(t.Health(status="ok", version=__version__, lxcfs=svc.lxcfs_state()))


async def _admin(request: Request) -> str:
    auth: Authenticator = request.app.state.auth
    org = await auth.admin_for(request.headers.get("authorization"))
    request.state.org = org  # for the access log
    return org


@router.get("/metrics", dependencies=[Depends(_admin)])
async def metrics(svc: Svc) -> Response:
    # The whole server's numbers (every org's VMs and runs): admins only. A
    # scraper without a key uses `arker serve --metrics-listen` instead.
    return await metrics_response(svc)


async def metrics_response(svc: Service) -> Response:
    """The Prometheus text, on this port or the `--metrics-listen` one."""
    try:
        running: int | None = await svc.vms_running()
    except Exception:
        running = None  # metrics must answer even when the engine cannot
    try:
        pending: int | None = svc.engine.storage_delete_pending()
    except Exception:
        pending = None
    text = svc.metrics.render(running, delete_pending=pending)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/goldens")
async def list_goldens(org: Org, svc: Svc) -> Response:
    return _json(await svc.list_goldens(org))


@router.post("/v1/goldens")
async def publish_golden(
    body: t.PublishGoldenRequest, caller: Caller, svc: Svc, idempotency_key: IdemKey = None
) -> Response:
    org, admin = caller
    return _json(await svc.golden_api.publish(org, admin, body), 201)


@router.put("/v1/goldens/{name}")
async def import_golden(
    name: GoldenName,
    request: Request,
    caller: Caller,
    svc: Svc,
    description: Annotated[str | None, Query(max_length=1000, pattern=r"^[^\x00]*$")] = None,
    for_all: bool = False,
    idempotency_key: IdemKey = None,
) -> Response:
    # Streamed to a spool file, bounded by the free space (not by
    # --max-file-bytes: a root filesystem is larger than a file).
    org, admin = caller
    op = await svc.golden_api.import_(org, admin, name, request.stream(), description, for_all)
    return _json(op, 202)


@router.delete("/v1/goldens/{name}")
async def delete_golden(
    name: GoldenName, caller: Caller, svc: Svc, idempotency_key: IdemKey = None
) -> Response:
    org, admin = caller
    await svc.golden_api.delete(org, admin, name)
    return Response(status_code=204)


@router.get("/v1/operations/{operation_id}")
async def get_operation(operation_id: OperationId, org: Org, svc: Svc) -> Response:
    return _json(await svc.operations.get(org, operation_id))


@router.get("/v1/operations/{operation_id}/events")
async def operation_events(operation_id: OperationId, org: Org, svc: Svc) -> Response:
    events = await svc.operations.events(org, operation_id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.get("/v1/vms")
async def list_vms(
    org: Org,
    svc: Svc,
    limit: int = 50,
    offset: int = 0,
    label: Annotated[list[str] | None, Query()] = None,
    parent_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    state: str | None = None,
) -> Response:
    # Bounds are checked by the service (400, as the contract says), not by
    # FastAPI (which would answer 422); so are the filters (422 naming one).
    return _json(await svc.list_vms(org, limit, offset, label, parent_id, state))


@router.get("/v1/vms/{vm_id}")
async def get_vm(vm_id: VmId, org: Org, svc: Svc) -> Response:
    return _json(await svc.get_vm(org, vm_id))


@router.patch("/v1/vms/{vm_id}")
async def update_vm(vm_id: VmId, body: t.VmUpdate, org: Org, svc: Svc) -> Response:
    return _json(await svc.update_vm(org, vm_id, body))


@router.delete("/v1/vms/{vm_id}")
async def delete_vm(vm_id: VmId, org: Org, svc: Svc) -> Response:
    await svc.delete_vm(org, vm_id)
    return Response(status_code=204)


@router.post("/v1/vms/{source}/fork")
async def fork_vm(
    source: Annotated[str, Path(min_length=1, max_length=128)],
    org: Org,
    svc: Svc,
    idempotency_key: IdemKey = None,
    body: t.ForkRequest | None = None,
) -> Response:
    vm = await svc.fork(org, source, body or t.ForkRequest(), idempotency_key)
    return _json(vm, 201)


@router.post("/v1/vms/{vm_id}/restart")
async def restart_vm(vm_id: VmId, org: Org, svc: Svc, idempotency_key: IdemKey = None) -> Response:
    # A replayed restart restarts again: harmless, the VM ends up freshly started.
    return _json(await svc.restart_vm(org, vm_id))


@router.patch("/v1/vms/{vm_id}/network")
async def update_vm_network(vm_id: VmId, body: t.NetworkUpdate, org: Org, svc: Svc) -> Response:
    return _json(await svc.update_network(org, vm_id, body))


@router.post("/v1/vms/{vm_id}/runs")
async def run_command(
    vm_id: VmId, body: t.RunRequest, org: Org, svc: Svc, idempotency_key: IdemKey = None
) -> Response:
    result, status = await svc.run(org, vm_id, body, idempotency_key)
    return _json(result, status)


Offset = Annotated[int | None, Query(ge=0, le=2**62)]


@router.get("/v1/vms/{vm_id}/runs/{run_id}")
async def get_run(
    vm_id: VmId,
    run_id: RunId,
    org: Org,
    svc: Svc,
    output: bool = True,
    stdout_after: Offset = None,
    stderr_after: Offset = None,
) -> Response:
    window = None
    if not output or stdout_after is not None or stderr_after is not None:
        window = Window(output, stdout_after, stderr_after)
    return _json(await svc.run_status(org, vm_id, run_id, window))


@router.get("/v1/vms/{vm_id}/runs/{run_id}/events")
async def run_events(
    vm_id: VmId,
    run_id: RunId,
    org: Org,
    svc: Svc,
    stdout_after: Offset = None,
    stderr_after: Offset = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> Response:
    offsets = parse_offsets(last_event_id, stdout_after, stderr_after)
    events = await svc.run_events(org, vm_id, run_id, offsets)
    # No buffering on the way (nginx honours the header): each event as it comes.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.post("/v1/vms/{vm_id}/runs/{run_id}/stdin")
async def write_run_stdin(
    vm_id: VmId, run_id: RunId, request: Request, org: Org, svc: Svc, close: bool = False
) -> Response:
    data = await request.body()  # bounded by the edge's body limit
    return _json(await svc.write_run_stdin(org, vm_id, run_id, data, close))


@router.post("/v1/vms/{vm_id}/runs/{run_id}/signal")
async def signal_run(vm_id: VmId, run_id: RunId, body: t.RunSignal, org: Org, svc: Svc) -> Response:
    return _json(await svc.signal_run(org, vm_id, run_id, body.signal))


@router.post("/v1/vms/{vm_id}/runs/{run_id}/cancel")
async def cancel_run(vm_id: VmId, run_id: RunId, org: Org, svc: Svc) -> Response:
    return _json(await svc.cancel_run(org, vm_id, run_id))


@router.get("/v1/vms/{vm_id}/files")
async def read_file(vm_id: VmId, path: FilePath, org: Org, svc: Svc) -> Response:
    data = await svc.read_file(org, vm_id, path)
    return Response(data, media_type="application/octet-stream")


@router.put("/v1/vms/{vm_id}/files")
async def write_file(
    vm_id: VmId, path: FilePath, request: Request, org: Org, svc: Svc, upload_id: UploadId = None
) -> Response:
    # The body streams to the VM's disk in pieces, counted against
    # --max-file-bytes as it comes (see edge.py and uploads.py).
    return _json(await svc.write_file(org, vm_id, path, request.stream(), upload_id))


@router.get("/v1/vms/{vm_id}/fs/list")
async def fs_list(
    vm_id: VmId,
    path: FilePath,
    org: Org,
    svc: Svc,
    depth: Annotated[int, Query(ge=1, le=5)] = 1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    return _json(await svc.fs.list(org, vm_id, path, depth, limit, offset))


@router.get("/v1/vms/{vm_id}/fs/stat")
async def fs_stat(vm_id: VmId, path: FilePath, org: Org, svc: Svc) -> Response:
    return _json(await svc.fs.stat(org, vm_id, path))


@router.post("/v1/vms/{vm_id}/fs/mkdir")
async def fs_mkdir(
    vm_id: VmId, body: t.FsMkdirRequest, org: Org, svc: Svc, idempotency_key: IdemKey = None
) -> Response:
    return _json(await svc.fs.mkdir(org, vm_id, body))


@router.post("/v1/vms/{vm_id}/fs/move")
async def fs_move(
    vm_id: VmId, body: t.FsMoveRequest, org: Org, svc: Svc, idempotency_key: IdemKey = None
) -> Response:
    return _json(await svc.fs.move(org, vm_id, body))


@router.delete("/v1/vms/{vm_id}/fs")
async def fs_remove(
    vm_id: VmId,
    path: FilePath,
    org: Org,
    svc: Svc,
    recursive: bool = False,
    idempotency_key: IdemKey = None,
) -> Response:
    await svc.fs.remove(org, vm_id, path, recursive)
    return Response(status_code=204)


@router.get("/v1/vms/{vm_id}/archive")
async def download_archive(
    vm_id: VmId,
    path: FilePath,
    org: Org,
    svc: Svc,
    accept_encoding: Annotated[str | None, Header(alias="Accept-Encoding", max_length=1024)] = None,
) -> Response:
    zstd = accepts_zstd(accept_encoding)
    stream = await svc.fs.download(org, vm_id, path, zstd)
    headers = {"Content-Encoding": "zstd"} if zstd else {}
    return StreamingResponse(stream, media_type="application/x-tar", headers=headers)


@router.put("/v1/vms/{vm_id}/archive")
async def upload_archive(
    vm_id: VmId,
    path: FilePath,
    request: Request,
    org: Org,
    svc: Svc,
    idempotency_key: IdemKey = None,
) -> Response:
    # Plain, gzip or zstd, told apart by the first bytes (Content-Encoding
    # says the same, or nothing); streamed to a spool file, bounded by the edge.
    return _json(await svc.fs.upload(org, vm_id, path, request.stream()))
