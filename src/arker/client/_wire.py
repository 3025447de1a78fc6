"""From HTTP responses and transport failures to SDK values and ArkerErrors.

    error body {"error": {"code", "message", "details"?}}  -> ArkerError(code, ..., status)
        (a code from a newer server stays a plain string)
    error status without such a body                     -> ArkerError(code for the status)
    a terminal's PtyRefused frame, its close 4000+status -> ArkerError(code, ..., status)
    httpx.TimeoutException                               -> ArkerError(timeout, status 0)
    other httpx.RequestError                             -> ArkerError(connection_error, 0)
    success body that is not JSON or breaks the contract -> ArkerError(invalid_response)

Success bodies are validated with the generated `arker._types` models. Fields a
newer server adds are dropped before validation (like unknown error codes, they
must not break an older client); missing or mistyped fields are errors.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from arker import _types as wire
from arker.client._models import (
    ArchiveUnpacked,
    CancelledRun,
    CompletedRun,
    FailedRun,
    FileWritten,
    FsEntry,
    FsList,
    Golden,
    Operation,
    PortToken,
    RunResult,
    RunStatus,
    StartedRun,
    TimedOutRun,
    Vm,
    VmPage,
)
from arker.errors import ArkerError, ErrorCode

__all__ = [
    "decode_archive_unpacked",
    "decode_file_written",
    "decode_golden",
    "decode_operation",
    "decode_fs_entry",
    "decode_fs_list",
    "decode_goldens",
    "decode_port_token",
    "decode_run",
    "decode_run_status",
    "decode_stdin_written",
    "decode_vm",
    "decode_vm_page",
    "decode_pty_frame",
    "error_from_pty_close",
    "error_from_pty_refusal",
    "error_from_response",
    "error_from_transport",
]

M = TypeVar("M", bound=BaseModel)

# For error statuses whose body is not an Arker error (a proxy's HTML page, say).
_CODE_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_REQUEST,
    408: ErrorCode.TIMEOUT,
    409: ErrorCode.CONFLICT,
    410: ErrorCode.VM_LOST,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.INVALID_REQUEST,
    429: ErrorCode.RATE_LIMITED,
    500: ErrorCode.INTERNAL,
    502: ErrorCode.UNAVAILABLE,
    503: ErrorCode.UNAVAILABLE,
    504: ErrorCode.UNAVAILABLE,
}

_RUN_MODELS: dict[str, type[BaseModel]] = {
    "completed": wire.CompletedRun,
    "timed_out": wire.TimedOutRun,
    "cancelled": wire.CancelledRun,
    "failed": wire.FailedRun,
    "started": wire.StartedRun,
}
_RUN_RESULTS: dict[str, Callable[..., RunResult]] = {
    "completed": CompletedRun,
    "timed_out": TimedOutRun,
    "cancelled": CancelledRun,
    "failed": FailedRun,
    "started": StartedRun,
}


def error_from_response(response: httpx.Response) -> ArkerError:
    """The ArkerError an error response stands for."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and code and isinstance(message, str):
            details = error.get("details")
            return ArkerError(code, message, status, details if isinstance(details, dict) else None)
    code = _CODE_BY_STATUS.get(status, ErrorCode.INVALID_RESPONSE)
    snippet = response.text[:200]
    return ArkerError(code, f"HTTP {status} without an Arker error body: {snippet!r}", status)


def error_from_transport(exc: httpx.RequestError) -> ArkerError:
    """The ArkerError for a request that got no response."""
    target = f"{exc.request.method} {exc.request.url}" if _has_request(exc) else "request"
    if isinstance(exc, httpx.TimeoutException):
        return ArkerError(ErrorCode.TIMEOUT, f"{target} timed out: {exc}", 0)
    return ArkerError(ErrorCode.CONNECTION_ERROR, f"{target} failed: {exc!r}", 0)


def _has_request(exc: httpx.RequestError) -> bool:
    try:
        exc.request  # noqa: B018 -- raises RuntimeError when httpx set none
    except RuntimeError:
        return False
    return True


def _invalid(response: httpx.Response, what: str) -> ArkerError:
    request = response.request
    return ArkerError(
        ErrorCode.INVALID_RESPONSE,
        f"{request.method} {request.url} answered {response.status_code} with {what}",
        response.status_code,
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise _invalid(response, "a body that is not JSON") from exc


def _known(model: type[BaseModel], data: Any) -> Any:
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if key in model.model_fields}
    return data


def _validate(model: type[M], data: Any, response: httpx.Response) -> M:
    try:
        return model.model_validate(_known(model, data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise _invalid(
            response, f"a {model.__name__} that breaks the contract: {where}: {first['msg']}"
        ) from exc


def _b64(value: str, response: httpx.Response) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(response, "output that is not base64") from exc


def _fields_with_bytes(model: BaseModel, response: httpx.Response) -> dict[str, Any]:
    fields = model.model_dump(exclude={"type"})
    for stream in ("stdout", "stderr"):
        if stream in fields:
            fields[stream] = _b64(fields[stream], response)
    if "warnings" in fields:  # models of results that carry output
        fields["warnings"] = list(getattr(model, "warnings", None) or [])
    return fields


def decode_vm(response: httpx.Response) -> Vm:
    return _validate(Vm, _json(response), response)


def decode_vm_page(response: httpx.Response) -> VmPage:
    data = _json(response)
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = {**data, "items": [_known(Vm, item) for item in data["items"]]}
    page = _validate(wire.VmList, data, response)
    return VmPage(items=page.items, total=page.total)


def decode_goldens(response: httpx.Response) -> list[Golden]:
    data = _json(response)
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = {**data, "items": [_known(Golden, item) for item in data["items"]]}
    return _validate(wire.GoldenList, data, response).items


def decode_golden(response: httpx.Response) -> Golden:
    return _validate(Golden, _json(response), response)


def decode_operation(response: httpx.Response) -> Operation:
    return _validate(Operation, _json(response), response)


def decode_run(response: httpx.Response) -> RunResult:
    data = _json(response)
    kind = data.get("type") if isinstance(data, dict) else None
    model = _RUN_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None or not isinstance(kind, str):
        raise _invalid(response, f"a run result of unknown type {kind!r}")
    return _RUN_RESULTS[kind](**_fields_with_bytes(_validate(model, data, response), response))


def decode_run_status(response: httpx.Response) -> RunStatus:
    status = _validate(wire.RunStatus, _json(response), response)
    return RunStatus(**_fields_with_bytes(status, response))


def decode_stdin_written(response: httpx.Response) -> wire.RunStdinWritten:
    return _validate(wire.RunStdinWritten, _json(response), response)


def decode_file_written(response: httpx.Response) -> FileWritten:
    return _validate(FileWritten, _json(response), response)


def decode_port_token(response: httpx.Response) -> PortToken:
    return _validate(PortToken, _json(response), response)


def decode_fs_entry(response: httpx.Response) -> FsEntry:
    return _validate(FsEntry, _json(response), response)


def decode_fs_list(response: httpx.Response) -> FsList:
    data = _json(response)
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        data = {**data, "entries": [_known(FsEntry, item) for item in data["entries"]]}
    return _validate(FsList, data, response)


def decode_archive_unpacked(response: httpx.Response) -> ArchiveUnpacked:
    return _validate(ArchiveUnpacked, _json(response), response)


PtyFrame = wire.PtyStarted | wire.PtyExit | wire.PtyRefused
_PTY_FRAME: TypeAdapter[PtyFrame] = TypeAdapter(PtyFrame)


def decode_pty_frame(text: str) -> PtyFrame:
    """A terminal's control frame from the server (text frames are JSON)."""
    try:
        return _PTY_FRAME.validate_json(text)
    except ValidationError as exc:
        raise ArkerError(
            ErrorCode.INVALID_RESPONSE, f"the terminal sent an unknown frame: {text[:200]!r}"
        ) from exc


def error_from_pty_refusal(refused: wire.PtyRefused, close_code: int | None) -> ArkerError:
    """The error of a refused terminal; its status is in the close that follows."""
    status = close_code - 4000 if close_code is not None and 4400 <= close_code <= 4599 else 0
    error = refused.error
    return ArkerError(error.code, error.message, status, error.details)


def error_from_pty_close(code: int | None, reason: str) -> ArkerError | None:
    """The error a terminal's close stands for, None for a normal end."""
    if code is not None and 4400 <= code <= 4599:
        status = code - 4000
        return ArkerError(_CODE_BY_STATUS.get(status, ErrorCode.UNAVAILABLE), reason, status)
    if code == 1000:
        return None
    if code in (1001, 1012):  # going away, restarting: the server shut down
        return ArkerError(ErrorCode.UNAVAILABLE, "the server ended the terminal: it shut down", 503)
    return ArkerError(ErrorCode.CONNECTION_ERROR, f"the terminal closed with {code} {reason}", 0)
