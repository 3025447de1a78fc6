"""A run's Server-Sent Events, decoded (no I/O): lines in, `RunEvent`s out,
and the result a streamed foreground run answers with."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from collections.abc import Callable
from typing import Any

from arker import _types as wire
from arker.client._models import (
    CancelledRun,
    CompletedRun,
    FailedRun,
    RunEvent,
    RunResult,
    RunStatus,
    TimedOutRun,
)
from arker.errors import ArkerError, ErrorCode

__all__ = ["EventParser", "Printer", "result_of"]

_OUTPUT = ("stdout", "stderr")


def _broken(what: str) -> ArkerError:
    return ArkerError(ErrorCode.INVALID_RESPONSE, f"the run's event stream sent {what}")


class EventParser:
    """Feed it a stream's lines; it hands back each event as it completes."""

    def __init__(self, stdout_offset: int = 0, stderr_offset: int = 0) -> None:
        self.offsets = [stdout_offset, stderr_offset]
        self._event = "message"
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> RunEvent | None:
        if line.startswith(":"):
            return None  # a keep-alive
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "id":
                self._id = value
            elif name == "data":
                self._data.append(value)
            return None
        event, eid, data = self._event, self._id, "\n".join(self._data)
        self._event, self._id, self._data = "message", None, []
        if not data:
            return None
        return self._decode(event, eid, data)

    def _decode(self, event: str, eid: str | None, data: str) -> RunEvent | None:
        if eid is not None:
            out, sep, err = eid.partition(":")
            if not (sep and out.isdigit() and err.isdigit()):
                raise _broken(f"an id that is not two offsets: {eid[:40]!r}")
            self.offsets = [int(out), int(err)]
        out_at, err_at = self.offsets
        if event in _OUTPUT:
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _broken("output that is not base64") from exc
            return RunEvent(
                type=event,  # type: ignore[arg-type]
                stream=event,  # type: ignore[arg-type]
                data=raw,
                stdout_offset=out_at,
                stderr_offset=err_at,
            )
        body = _json(data)
        if event == "gap":
            stream = body.get("stream")
            if stream not in _OUTPUT or not isinstance(body.get("bytes"), int):
                raise _broken(f"a gap it does not describe: {data[:80]!r}")
            return RunEvent(
                type="gap",
                stream=stream,
                gap_bytes=body["bytes"],
                stdout_offset=out_at,
                stderr_offset=err_at,
            )
        if event == "end":
            try:
                status = wire.RunStatus.model_validate(body)
            except ValueError as exc:
                raise _broken("an end that is not a RunStatus") from exc
            fields = status.model_dump()
            fields["stdout"] = fields["stderr"] = b""
            fields["warnings"] = list(status.warnings or [])
            return RunEvent(
                type="end",
                status=RunStatus(**fields),
                stdout_offset=out_at,
                stderr_offset=err_at,
            )
        return None  # an event a newer server sends: not ours to know


def _json(data: str) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise _broken("data that is not JSON") from exc
    if not isinstance(body, dict):
        raise _broken("data that is not an object")
    return body


class Printer:
    """Hands each stream's bytes to its callback as text, never splitting a
    UTF-8 character between two calls."""

    def __init__(
        self,
        on_stdout: Callable[[str], object] | None,
        on_stderr: Callable[[str], object] | None,
    ) -> None:
        self._calls = {"stdout": on_stdout, "stderr": on_stderr}
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in _OUTPUT
        }
        self.output = {"stdout": bytearray(), "stderr": bytearray()}

    def take(self, event: RunEvent) -> None:
        if event.stream is None or event.type == "gap":
            return
        self.output[event.stream] += event.data
        call = self._calls[event.stream]
        text = self._decoders[event.stream].decode(event.data)
        if call is not None and text:
            call(text)

    def flush(self) -> None:
        for name in _OUTPUT:
            text = self._decoders[name].decode(b"", final=True)
            call = self._calls[name]
            if call is not None and text:
                call(text)


def result_of(status: RunStatus, printer: Printer, timeout_s: float | None) -> RunResult:
    """A streamed run's answer, as the foreground run would have given it."""
    common: dict[str, Any] = {
        "run_id": status.run_id,
        "stdout": bytes(printer.output["stdout"]),
        "stderr": bytes(printer.output["stderr"]),
        "stdout_truncated": status.stdout_truncated,
        "stderr_truncated": status.stderr_truncated,
        "duration_ms": status.duration_ms or 0,
        "warnings": status.warnings,
    }
    if status.state == "completed":
        code = status.exit_code if status.exit_code is not None else -1
        return CompletedRun(exit_code=code, oom_killed=status.oom_killed, **common)
    if status.state == "timed_out":
        return TimedOutRun(timeout_s=timeout_s or 0.0, **common)
    if status.state == "cancelled":
        return CancelledRun(**common)
    return FailedRun(failure_reason=status.failure_reason or "the run was lost", **common)
