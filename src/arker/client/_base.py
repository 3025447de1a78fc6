"""Everything the sync and async clients share, none of it I/O.

The I/O twins (`_async.py`, written; `_sync.py`, generated from it) only send
the `Request`s built here, retry them as `RetryPolicy.delay_after` says, and
decode the answers with `_wire`. Routing lives in `_routing`, retry timing in
`_retry`, response decoding and error mapping in `_wire`.

Every mutating request (fork, run, cancel, delete, file write) is built once
with its Idempotency-Key (and a write with its Upload-Id), so all attempts of
one call carry the same keys.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ValidationError

from arker import _types as wire
from arker._paths import check_path
from arker.client._models import Vm
from arker.client._retry import RetryPolicy
from arker.client._routing import Endpoints, resolve_api_key, resolve_endpoints
from arker.errors import ArkerError, ErrorCode

__all__ = ["UPLOAD_PIECE_BYTES", "ArkerBase", "ComputerBase", "Request", "RetryArg"]

RetryArg = RetryPolicy | Mapping[str, Any] | bool | None

# A foreground run holds its HTTP request open until the command ends: give the
# request the run's own timeout plus this much for the server to answer.
RUN_TIMEOUT_SLACK_S = 30.0

# A file body is sent in pieces of this size, with its Content-Length. httpx's
# sync transport (httpcore) re-slices what is left of a buffer after every
# send(), so a 100 MiB body handed over whole was copied again and again
# (quadratic; ~120 MB/s on a 2-core machine); piece by piece, each copy is small.
UPLOAD_PIECE_BYTES = 1024 * 1024

PTY_MAX_SIZE = 1000  # the contract's bound on a terminal's columns and rows

_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # the contract's Idempotency-Key / Upload-Id


@dataclass(frozen=True)
class Request:
    """One call, as sent by every attempt."""

    method: str
    url: str
    headers: dict[str, str]
    timeout_s: float
    params: Mapping[str, str | int | Sequence[str]] | None = None
    json: dict[str, Any] | None = None
    content: bytes | None = None
    # A local file sent as the body, read afresh in pieces by every attempt.
    upload: Path | None = None


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{what} must be 1 to 128 characters")
    return quote(value, safe="")


def _key(value: str | None, what: str) -> str:
    if value is None:
        return str(uuid.uuid4())
    if not isinstance(value, str) or _KEY.fullmatch(value) is None:
        raise ArkerError(
            ErrorCode.INVALID_REQUEST, f"{what} must be 1 to 255 printable ASCII characters"
        )
    return value


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()  # an argument left as it is (where None means something)


def _body(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    try:
        return model(**fields).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{where}: {first['msg']}") from exc


def _patch(model: type[BaseModel], fields: dict[str, Any]) -> dict[str, Any]:
    """A PATCH body: the fields given, None sent as null."""
    try:
        return model(**fields).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{where}: {first['msg']}") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _offset(value: int, what: str) -> int:
    if not _is_int(value) or value < 0:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{what} must be an int >= 0, not {value!r}")
    return value


def _port(port: int) -> int:
    if not _is_int(port) or not 1 <= port <= 65535:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"port must be 1..65535, not {port!r}")
    return port


def _size(cols: int, rows: int) -> str:
    """A terminal's size, checked here as the server would, as a PtyResize frame."""
    for name, value in (("cols", cols), ("rows", rows)):
        if not _is_int(value) or not 1 <= value <= PTY_MAX_SIZE:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST, f"{name} must be 1..{PTY_MAX_SIZE}, not {value!r}"
            )
    return wire.PtyResize(type="resize", cols=cols, rows=rows).model_dump_json()


def _as_bytes(data: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise ArkerError(ErrorCode.INVALID_REQUEST, f"{what} must be bytes or str")


class ArkerBase:
    """Configuration and request building shared by `Arker` and `AsyncArker`."""

    def __init__(
        self,
        api_key: str | None,
        region: str | None,
        base_url: str | None,
        burst_base_url: str | None,
        retry: RetryArg,
        timeout_s: float,
    ) -> None:
        from arker import __version__  # the package is loaded by the time a client is made

        if not isinstance(timeout_s, int | float) or not timeout_s > 0:
            raise ArkerError(ErrorCode.INVALID_REQUEST, "timeout_s must be a number > 0")
        self.endpoints: Endpoints = resolve_endpoints(region, base_url, burst_base_url)
        self.retry: RetryPolicy = RetryPolicy.coerce(retry)
        self.timeout_s = float(timeout_s)
        self._headers = {
            "Authorization": f"Bearer {resolve_api_key(api_key)}",
            "User-Agent": f"arker-python/{__version__}",
        }

    @property
    def base_url(self) -> str:
        """Where normal goldens and VMs are served."""
        return self.endpoints.normal

    @property
    def burst_base_url(self) -> str:
        """Where `arkuntu` and burst VM ids are served."""
        return self.endpoints.burst

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _request(
        self,
        method: str,
        endpoint: str,
        path: str,
        *,
        params: Mapping[str, str | int | Sequence[str]] | None = None,
        json: dict[str, Any] | None = None,
        content: bytes | None = None,
        idempotency_key: str | None = None,
        upload_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Request:
        headers = dict(self._headers)
        if method != "GET":  # every mutating call: fork, run, cancel, delete, write
            headers["Idempotency-Key"] = _key(idempotency_key, "idempotency_key")
        if content is not None:
            headers["Content-Type"] = "application/octet-stream"
            # Declared, so that a body sent in pieces is not sent chunked.
            headers["Content-Length"] = str(len(content))
            headers["Upload-Id"] = _key(upload_id, "upload_id")
        return Request(
            method=method,
            url=endpoint + path,
            headers=headers,
            timeout_s=timeout_s if timeout_s is not None else self.timeout_s,
            params=params,
            json=json,
            content=content,
        )

    def _goldens_request(self) -> Request:
        return self._request("GET", self.endpoints.normal, "/v1/goldens")

    def _publish_golden_request(
        self, name: str, from_vm: str, description: str | None, for_all: bool
    ) -> Request:
        body = _body(
            wire.PublishGoldenRequest,
            name=name,
            from_vm=from_vm,
            description=description,
            for_all=True if for_all else None,  # sent only when set
        )
        endpoint = self.endpoints.for_source(from_vm)
        return self._request("POST", endpoint, "/v1/goldens", json=body)

    def _import_golden_request(
        self, name: str, tarball: Path, description: str | None, for_all: bool
    ) -> Request:
        try:
            size = tarball.stat().st_size
        except OSError as exc:
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"cannot read {tarball}: {exc}") from exc
        params: dict[str, str | int] = {}
        if description is not None:
            params["description"] = description
        if for_all:
            params["for_all"] = "true"
        request = self._request(
            "PUT",
            self.endpoints.normal,
            f"/v1/goldens/{_segment(name, 'name')}",
            params=params or None,
        )
        request.headers["Content-Type"] = "application/octet-stream"
        request.headers["Content-Length"] = str(size)
        return replace(request, upload=tarball, timeout_s=max(request.timeout_s, 600.0))

    def _delete_golden_request(self, name: str) -> Request:
        path = f"/v1/goldens/{_segment(name, 'name')}"
        return self._request("DELETE", self.endpoints.normal, path)

    def _operation_request(self, operation_id: str) -> Request:
        path = f"/v1/operations/{_segment(operation_id, 'operation_id')}"
        return self._request("GET", self.endpoints.normal, path)

    def _list_request(
        self,
        limit: int,
        offset: int,
        label: Mapping[str, str] | None = None,
        parent_id: str | None = None,
        state: str | None = None,
    ) -> Request:
        # The contract's bounds on GET /v1/vms (query parameters get no generated model).
        if not _is_int(limit) or not _is_int(offset) or not 1 <= limit <= 1000 or offset < 0:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST, "list needs 1 <= limit <= 1000 and offset >= 0"
            )
        params: dict[str, str | int | Sequence[str]] = {"limit": limit, "offset": offset}
        if label:  # filters are sent only when set
            if not isinstance(label, Mapping):
                raise ArkerError(ErrorCode.INVALID_REQUEST, "label must be a mapping of key: value")
            params["label"] = [f"{k}={v}" for k, v in label.items()]
        if parent_id is not None:
            params["parent_id"] = parent_id
        if state is not None:
            params["state"] = state
        return self._request("GET", self.endpoints.normal, "/v1/vms", params=params)

    def _get_request(self, endpoint: str, vm_id: str) -> Request:
        return self._request("GET", endpoint, f"/v1/vms/{_segment(vm_id, 'vm_id')}")


ArkerT = TypeVar("ArkerT", bound=ArkerBase)


class ComputerBase(Generic[ArkerT]):
    """A VM handle: its id and the endpoint it is pinned to."""

    def __init__(self, arker: ArkerT, vm_id: str, endpoint: str, info: Vm | None = None) -> None:
        self._arker = arker
        self._path = f"/v1/vms/{_segment(vm_id, 'vm_id')}"
        self.vm_id = vm_id
        self.endpoint = endpoint
        self.info: Vm | None = info

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vm_id={self.vm_id!r}, endpoint={self.endpoint!r})"

    def _call(self, method: str, path: str = "", **kwargs: Any) -> Request:
        return self._arker._request(method, self.endpoint, self._path + path, **kwargs)

    def _fork_request(
        self,
        name: str | None,
        durable: bool,
        key: str | None,
        resources: Mapping[str, Any] | BaseModel | None = None,
        network: Mapping[str, Any] | BaseModel | None = None,
        ttl_s: Any = KEEP,
        idle_stop_s: Any = KEEP,
        labels: Mapping[str, str] | None = None,
        sizes: Mapping[str, Any] | None = None,
    ) -> Request:
        if isinstance(resources, BaseModel):
            resources = resources.model_dump(exclude_none=True)
        if sizes and any(v is not None for v in sizes.values()):  # the shorthands win
            resources = {
                **(resources or {}), **{k: v for k, v in sizes.items() if v is not None}
            }  # fmt: skip
        if isinstance(network, BaseModel):
            network = network.model_dump()
        # Sent only when set; None is sent too (null: none, whatever the
        # server's default), so it cannot mean "not set" here: KEEP does.
        lifecycle = {
            k: v for k, v in (("ttl_s", ttl_s), ("idle_stop_s", idle_stop_s)) if v is not KEEP
        }
        body = _body(
            wire.ForkRequest,
            name=name,
            durable=durable,
            resources=dict(resources) if resources else None,  # sent only when set
            network=dict(network) if network is not None else None,
            labels=dict(labels) if labels is not None else None,
            **{k: v for k, v in lifecycle.items() if v is not None},
        )
        body.update({k: None for k, v in lifecycle.items() if v is None})
        return self._call("POST", "/fork", json=body, idempotency_key=key)

    def _update_request(self, ttl_s: Any, idle_stop_s: Any) -> Request:
        fields = {
            k: v for k, v in (("ttl_s", ttl_s), ("idle_stop_s", idle_stop_s)) if v is not KEEP
        }
        return self._call("PATCH", json=_patch(wire.VmUpdate, fields))

    def _run_request(
        self,
        command: str,
        *,
        background: bool,
        timeout_s: float | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdin: bytes | str | None,
        user: Literal["user", "root"] | None,
        idempotency_key: str | None,
        stdin_open: bool = False,
    ) -> Request:
        stdin_b64 = None
        if stdin is not None:
            stdin_b64 = base64.b64encode(_as_bytes(stdin, "stdin")).decode("ascii")
        body = _body(
            wire.RunRequest,
            command=command,
            background=background,
            timeout_s=timeout_s,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=stdin_b64,
            user=user,
            stdin_open=True if stdin_open else None,  # sent only when set
        )
        http_timeout_s = self._arker.timeout_s
        if not background and timeout_s is not None:
            http_timeout_s = max(http_timeout_s, timeout_s + RUN_TIMEOUT_SLACK_S)
        return self._call(
            "POST",
            "/runs",
            json=body,
            idempotency_key=idempotency_key,
            timeout_s=http_timeout_s,
        )

    def _run_status_request(
        self,
        run_id: str,
        output: bool = True,
        stdout_after: int | None = None,
        stderr_after: int | None = None,
    ) -> Request:
        params: dict[str, str | int] = {} if output else {"output": "false"}
        for name, at in (("stdout_after", stdout_after), ("stderr_after", stderr_after)):
            if at is not None:
                params[name] = _offset(at, name)
        return self._call("GET", f"/runs/{_segment(run_id, 'run_id')}", params=params or None)

    def _run_events_request(self, run_id: str, stdout_after: int, stderr_after: int) -> Request:
        params: dict[str, str | int] = {
            "stdout_after": _offset(stdout_after, "stdout_after"),
            "stderr_after": _offset(stderr_after, "stderr_after"),
        }
        return self._call("GET", f"/runs/{_segment(run_id, 'run_id')}/events", params=params)

    def _stdin_request(self, run_id: str, data: bytes | str, close: bool) -> Request:
        params: dict[str, str | int] | None = {"close": "true"} if close else None
        return self._call(
            "POST",
            f"/runs/{_segment(run_id, 'run_id')}/stdin",
            params=params,
            content=_as_bytes(data, "data"),
            # The server waits up to a minute for the command to read it.
            timeout_s=max(self._arker.timeout_s, 60 + RUN_TIMEOUT_SLACK_S),
        )

    def _signal_request(self, run_id: str, name: str) -> Request:
        body = _body(wire.RunSignal, signal=name)
        return self._call("POST", f"/runs/{_segment(run_id, 'run_id')}/signal", json=body)

    def _cancel_run_request(self, run_id: str) -> Request:
        return self._call("POST", f"/runs/{_segment(run_id, 'run_id')}/cancel")

    def _network_request(self, egress: bool | None, allow: Any) -> Request:
        fields: dict[str, Any] = {} if egress is None else {"egress": egress}
        if allow is not KEEP:
            fields["allow"] = None if allow is None else list(allow)
        return self._call("PATCH", "/network", json=_patch(wire.NetworkUpdate, fields))

    def _restart_request(self) -> Request:
        return self._call("POST", "/restart")

    def _delete_request(self) -> Request:
        return self._call("DELETE")

    def _refresh_request(self) -> Request:
        return self._call("GET")

    def port_url(self, port: int) -> str:
        """The URL of `port` inside this VM, through the API (E2B's `get_host`):
        `{endpoint}/v1/vms/{vm_id}/ports/{port}/`. Requests to it need the API
        key; for a browser, ask `port_token(port)` for a URL that does not."""
        return f"{self.endpoint}{self._path}/ports/{_port(port)}/"

    def _port_token_request(self, port: int, ttl_s: int | None) -> Request:
        body = _body(wire.PortTokenRequest, ttl_s=ttl_s) if ttl_s is not None else None
        return self._call("POST", f"/ports/{_port(port)}/token", json=body)

    def _ws_target(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> tuple[str, dict[str, str]]:
        url = f"{self.endpoint}{self._path}{path}"
        url = "ws" + url.removeprefix("http") if url.startswith("http") else url
        if params:
            url += "?" + urlencode(params)
        return url, {k: v for k, v in self._arker._headers.items()}

    def _tcp_target(self, port: int) -> tuple[str, dict[str, str]]:
        """(ws URL, headers) of the raw TCP relay into `port` (for `arker forward`)."""
        return self._ws_target(f"/tcp/{_port(port)}")

    def _pty_target(
        self, user: str, cols: int, rows: int, command: str | None, term: str | None
    ) -> tuple[str, dict[str, str]]:
        """(ws URL, headers) of a terminal in this VM."""
        if user not in ("user", "root"):
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"user must be user or root, not {user!r}")
        _size(cols, rows)
        params = {"user": user, "cols": str(cols), "rows": str(rows)}
        if command is not None:
            params["command"] = command
        if term is not None:
            params["term"] = term
        return self._ws_target("/pty", params)

    def _read_file_request(self, path: str) -> Request:
        return self._call("GET", "/files", params={"path": check_path(path)})

    def _write_file_request(self, path: str, data: bytes | str, upload_id: str | None) -> Request:
        return self._call(
            "PUT",
            "/files",
            params={"path": check_path(path)},
            content=_as_bytes(data, "data"),
            upload_id=upload_id,
        )

    # -- directories and archives (vm.fs)
    def _fs_list_request(self, path: str, depth: int, limit: int, offset: int) -> Request:
        # The contract's bounds on GET .../fs/list (query parameters get no model).
        if not all(_is_int(v) for v in (depth, limit, offset)) or not (
            1 <= depth <= 5 and 1 <= limit <= 1000 and 0 <= offset <= 100_000
        ):
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                "list needs 1 <= depth <= 5, 1 <= limit <= 1000 and 0 <= offset <= 100000",
            )
        params: dict[str, str | int] = {"path": check_path(path, home=True)}
        params.update(depth=depth, limit=limit, offset=offset)
        return self._call("GET", "/fs/list", params=params)

    def _fs_stat_request(self, path: str) -> Request:
        return self._call("GET", "/fs/stat", params={"path": check_path(path, home=True)})

    def _fs_mkdir_request(self, path: str, parents: bool) -> Request:
        body = _body(wire.FsMkdirRequest, path=check_path(path), parents=True if parents else None)
        return self._call("POST", "/fs/mkdir", json=body)

    def _fs_move_request(self, source: str, destination: str, overwrite: bool) -> Request:
        body = _body(
            wire.FsMoveRequest,
            source=check_path(source),
            destination=check_path(destination),
            overwrite=True if overwrite else None,
        )
        return self._call("POST", "/fs/move", json=body)

    def _fs_remove_request(self, path: str, recursive: bool) -> Request:
        params: dict[str, str | int] = {"path": check_path(path)}
        if recursive:
            params["recursive"] = "true"
        return self._call("DELETE", "/fs", params=params)

    def _archive_download_request(self, path: str) -> Request:
        return self._call("GET", "/archive", params={"path": check_path(path, home=True)})

    def _archive_upload_request(self, path: str, data: bytes) -> Request:
        return self._call(
            "PUT", "/archive", params={"path": check_path(path, home=True)}, content=data
        )
