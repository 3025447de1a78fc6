"""A run request three ways: as the client sent it, as stored with the run
(JSON, so a restart can run it again), and as the engine takes it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from arker import _types as t
from arker.engine.base import RunSpec
from arker.errors import ArkerError, ErrorCode

__all__ = ["decode_stdin", "for_engine", "request_hash", "stored"]

MAX_STDIN_BYTES = 8 * 1024 * 1024


def request_hash(payload: dict[str, Any]) -> str:
    """A canonical hash of a request, to tell a retry from a different request."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def stored(req: t.RunRequest) -> dict[str, Any]:
    """The request with defaults filled in, so `{}` and explicit defaults hash alike."""
    spec: dict[str, Any] = {
        "command": req.command,
        "env": req.env or {},
        "cwd": req.cwd or "/home/user",
        "stdin": req.stdin or "",
        "user": req.user or "user",
        "timeout_s": req.timeout_s,
    }
    if req.stdin_open:  # only when set: requests from before hash as they did
        spec["stdin_open"] = True
    return spec


def for_engine(
    spec: dict[str, Any] | str, output_cap_bytes: int, stdin: bytes | None = None
) -> RunSpec:
    """From the stored request (as JSON, or before it was written); `stdin`,
    when given, is its stdin decoded already."""
    if isinstance(spec, str):
        spec = json.loads(spec)
        assert isinstance(spec, dict)
    return RunSpec(
        command=spec["command"],
        env=spec["env"],
        cwd=spec["cwd"],
        stdin=decode_stdin(spec["stdin"]) if stdin is None else stdin,
        user=spec["user"],
        timeout_s=spec["timeout_s"],
        output_cap_bytes=output_cap_bytes,
        stdin_open=bool(spec.get("stdin_open")),
    )


def decode_stdin(stdin: str | None) -> bytes:
    if not stdin:
        return b""
    try:
        data = base64.b64decode(stdin, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArkerError(ErrorCode.INVALID_REQUEST, "stdin must be base64") from exc
    if len(data) > MAX_STDIN_BYTES:
        raise ArkerError(ErrorCode.PAYLOAD_TOO_LARGE, "stdin is over 8 MiB")
    return data
