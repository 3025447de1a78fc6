"""Values to JSON and back, from their type hints alone.

The remote engine (remote.py) crosses every `Engine` method with this: the
hints of a method's parameters and result say how each value is written,
so a new method, or a new field of a dataclass, crosses with no code of
its own. Plain JSON types go as they are; bytes as base64; enums as their
value; dataclasses as objects of their fields; tuples and lists as arrays;
unions by the first arm that takes the value.
"""

from __future__ import annotations

import base64
import binascii
import collections.abc
import dataclasses
import enum
import functools
import socket
import types
import typing
from typing import Annotated, Any, Literal, get_args, get_origin

from arker.errors import ArkerError, ErrorCode

__all__ = ["from_wire", "hints_of", "to_wire"]


def hints_of(obj: Any) -> dict[str, Any]:
    """`typing.get_type_hints` that also knows the names engine modules import
    only for type checking (socket, Pty)."""
    from arker.engine.pty import Pty

    module = __import__(obj.__module__, fromlist=["_"])
    names = {**vars(module), "socket": socket, "Pty": Pty}
    return typing.get_type_hints(obj, globalns=names, include_extras=True)


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return hints_of(cls)


def _unwrap(hint: Any) -> Any:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType)


def to_wire(value: Any, hint: Any) -> Any:
    hint = _unwrap(hint)
    if value is None:
        return None
    if _is_union(hint):
        for arm in get_args(hint):
            if arm is not type(None) and _fits(value, arm):
                return to_wire(value, arm)
        raise TypeError(f"{value!r} fits no arm of {hint}")
    if hint is bytes:
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = _field_hints(type(value))
        return {
            f.name: to_wire(getattr(value, f.name), fields[f.name])
            for f in dataclasses.fields(value)
        }
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return [to_wire(v, a) for v, a in zip(value, args, strict=True)]
    if origin in (list, tuple, collections.abc.Sequence):
        return [to_wire(v, args[0] if args else Any) for v in value]
    if origin in (dict, collections.abc.Mapping):
        return {str(k): to_wire(v, args[1] if args else Any) for k, v in value.items()}
    return value


def _fits(value: Any, arm: Any) -> bool:
    arm = _unwrap(arm)
    if get_origin(arm) is Literal:
        return value in get_args(arm)
    base = get_origin(arm) or arm
    if base is Any:
        return True
    if base is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(base, type) and isinstance(value, base)


def _bad(what: str, data: Any, hint: Any) -> ArkerError:
    return ArkerError(
        ErrorCode.INVALID_REQUEST, f"{what}: {str(data)[:80]!r} is not a {hint}", status=422
    )


def from_wire(data: Any, hint: Any, what: str = "value") -> Any:
    """The value `to_wire` wrote; invalid_request (422) for anything else."""
    hint = _unwrap(hint)
    if hint is Any:
        return data
    if _is_union(hint):
        arms = get_args(hint)
        if data is None and type(None) in arms:
            return None
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return from_wire(data, arm, what)
            except ArkerError:
                continue
        raise _bad(what, data, hint)
    if data is None:
        if hint is type(None):
            return None
        raise _bad(what, data, hint)
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Literal:
        if data not in args:
            raise _bad(what, data, hint)
        return data
    if hint is bytes:
        if not isinstance(data, str):
            raise _bad(what, data, hint)
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise _bad(what, data, hint) from exc
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError as exc:
            raise _bad(what, data, hint) from exc
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass(data, hint, what)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(data, list):
            raise _bad(what, data, hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(data) != len(args):
                raise _bad(what, data, hint)
            return tuple(from_wire(v, a, what) for v, a in zip(data, args, strict=True))
        items = [from_wire(v, args[0] if args else Any, what) for v in data]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(data, dict):
            raise _bad(what, data, hint)
        value_hint = args[1] if args else Any
        return {str(k): from_wire(v, value_hint, f"{what}.{k}") for k, v in data.items()}
    return _scalar(data, hint, what)


def _scalar(data: Any, hint: Any, what: str) -> Any:
    if hint is float and isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if hint is int and isinstance(data, bool):
        raise _bad(what, data, hint)
    if hint in (bool, int, str) and isinstance(data, hint):
        return data
    raise _bad(what, data, hint)


def _dataclass(data: Any, cls: type, what: str) -> Any:
    if not isinstance(data, dict):
        raise _bad(what, data, cls)
    fields = _field_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ArkerError(
            ErrorCode.INVALID_REQUEST, f"{what}: unknown fields {sorted(unknown)}", status=422
        )
    values = {name: from_wire(v, fields[name], f"{what}.{name}") for name, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{what}: {exc}", status=422) from exc
