"""Arker's one error type.

    ArkerError(code, message, status, details=None)
      code     what callers branch on: an ErrorCode value, or a plain string
               from a newer server
      status   the HTTP status (0 when no response arrived: connection or
               timeout failures on the client side)

The table below is the contract's `ErrorCode` schema with its statuses; the
server and the SDK both read it, so the two cannot disagree.
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any

__all__ = ["ArkerError", "ErrorCode", "STATUS_BY_CODE"]


class ErrorCode(enum.StrEnum):
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    INVALID_REQUEST = "invalid_request"
    INVALID_PATH = "invalid_path"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_OPERATION = "unsupported_operation"
    VM_LOST = "vm_lost"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    INSUFFICIENT_STORAGE = "insufficient_storage"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # Client-side only: no response arrived, or it could not be understood.
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    INVALID_RESPONSE = "invalid_response"


# The default HTTP status of each server-side code (invalid_request is also sent
# as 405 and 422, unavailable as 502 for a VM port nothing listens on; the
# contract lists every status a code may carry).
STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_PATH: 400,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_OPERATION: 400,
    ErrorCode.VM_LOST: 410,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INSUFFICIENT_STORAGE: 507,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class ArkerError(Exception):
    """Every failure Arker reports, on the server and in the SDK."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(code, str) and not isinstance(code, ErrorCode):
            with contextlib.suppress(ValueError):  # a newer server's code stays a plain str
                code = ErrorCode(code)
        if status is None:
            status = STATUS_BY_CODE.get(code, 500) if isinstance(code, ErrorCode) else 500
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode | str = code
        self.message = message
        self.status = status
        self.details = details

    def __repr__(self) -> str:
        code = str(self.code)
        return f"ArkerError(code={code!r}, message={self.message!r}, status={self.status})"

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}
