"""The host API's table of methods, read off the interfaces' signatures.

Every public method of `Engine` (and of `HostExtras`) is one entry: its
parameters and result with their type hints, and how each crosses, by type:

    result bytes            the response body, raw
    result ArchiveReader    a streamed response body
    result FileWriter       the caller spools the pieces; commit sends them
                            as one streamed request body
    result tuple[Fd, ...]   fds cannot cross: a remote caller gets ()
    result socket.socket    a WebSocket carrying the connection's bytes
    result Pty              a WebSocket: bytes, then resize/exit messages
    parameter bytes         the request body (one per method)
    parameter HostPath      the file, streamed as the request body
    parameter a callable    stays with the caller (the host gets None)
    parameter BinaryIO      a file object of this process: the call cannot
                            cross (unsupported_operation, raised here); the
                            host makes these itself (its Shipper, to S3)
    anything else           JSON, by codec.py

so adding a method to `Engine` adds it to the host API with no code here.
"""

from __future__ import annotations

import collections.abc
import inspect
import socket
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO, get_args, get_origin

from arker.cluster.codec import hints_of
from arker.engine.base import ArchiveReader, Engine, Fd, FileWriter, HostPath
from arker.engine.pty import Pty

__all__ = ["LIFECYCLE", "Method", "method_table"]

# The engine's own start and stop belong to the host agent, not to callers.
LIFECYCLE = frozenset({"open", "close"})

# Result kinds that are not JSON values, by type.
RESULTS: dict[Any, str] = {
    bytes: "bytes",
    ArchiveReader: "archive",
    FileWriter: "writer",
    socket.socket: "socket",
    Pty: "pty",
}
STREAMED = frozenset({"socket", "pty"})  # over a WebSocket, not one request


@dataclass(frozen=True)
class Method:
    name: str
    signature: inspect.Signature  # with self
    params: dict[str, Any]  # name -> hint, the ones that cross as JSON
    result: Any
    kind: str  # "value", a RESULTS kind, "fds", or "local" (cannot cross)
    body: str | None  # the parameter sent as the request body, if any
    body_is_path: bool  # that parameter is a HostPath (a file), not bytes
    local: frozenset[str]  # parameters that stay with the caller

    @property
    def body_streamed(self) -> bool:
        """Whether the request carries a body (and the JSON arguments in a header)."""
        return self.body is not None or self.kind == "writer"


def _unwrap(hint: Any) -> Any:
    return get_args(hint)[0] if get_origin(hint) is Annotated else hint


def _is_callable(hint: Any) -> bool:
    for arm in get_args(hint) or (hint,):
        if get_origin(arm) is collections.abc.Callable or arm is collections.abc.Callable:
            return True
    return False


def _is_fds(hint: Any) -> bool:
    args = get_args(hint)
    return get_origin(hint) is tuple and bool(args) and args[0] == Fd


def _method(name: str, fn: Any) -> Method:
    sig = inspect.signature(fn)
    hints = hints_of(fn)
    result = hints.get("return", Any)
    kind = RESULTS.get(result, "value")
    if _is_fds(result):
        kind = "fds"
    if any(_unwrap(hints.get(p)) is BinaryIO for p in list(sig.parameters)[1:]):
        kind = "local"
    params: dict[str, Any] = {}
    local: set[str] = set()
    body: str | None = None
    body_is_path = False
    for pname in list(sig.parameters)[1:]:
        hint = hints.get(pname, Any)
        if _is_callable(hint):
            local.add(pname)
        elif hint is bytes or hint == HostPath:
            if body is not None:
                raise TypeError(f"{name}: two parameters would be the request body")
            body, body_is_path = pname, hint == HostPath
        else:
            params[pname] = hint
    if body is not None and kind in STREAMED | {"writer"}:
        raise TypeError(f"{name}: a body parameter and a streamed result")
    return Method(name, sig, params, result, kind, body, body_is_path, frozenset(local))


def method_table(*interfaces: type) -> dict[str, Method]:
    """Every public method of the interfaces (Engine's lifecycle aside)."""
    table: dict[str, Method] = {}
    for iface in interfaces or (Engine,):
        for name, fn in inspect.getmembers(iface, inspect.isfunction):
            if name.startswith("_") or name in LIFECYCLE or name in table:
                continue
            table[name] = _method(name, fn)
    return table


# HostPath and Fd are Annotated[...]: compared by ==, never by identity.
assert get_origin(HostPath) is Annotated and get_origin(Fd) is Annotated
