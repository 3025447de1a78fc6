"""The wire contract, as the smoke test checks responses against it.

Responses are judged by what contract/openapi.json says the operation answers
with that status: an undocumented status fails, a JSON body must match the
status's schema, other bodies must carry the documented media type. The
contract is OpenAPI 3.1, whose schemas are JSON Schema 2020-12, so jsonschema
validates them as they are.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

__all__ = ["Contract", "ContractError", "load_contract"]


class ContractError(Exception):
    """A response the contract does not allow."""


def _contract_text() -> str:
    # The installed package carries a copy once packaging includes it; a
    # checkout (editable install, tests) reads the one source of truth.
    packaged = importlib.resources.files("arker").joinpath("contract", "openapi.json")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    repo_copy = Path(__file__).resolve().parents[3] / "contract" / "openapi.json"
    try:
        return repo_copy.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContractError(
            "contract/openapi.json is not installed with this arker package"
        ) from None


def _jsonschema() -> Any:
    # A dev dependency today; the message says what to do where it is missing.
    try:
        import jsonschema  # type: ignore[import-untyped,unused-ignore]
        import jsonschema.exceptions  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ContractError(
            "checking the contract needs jsonschema: pip install jsonschema"
        ) from None
    return jsonschema


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True  # format applies to strings only
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    # The contract's datetimes are instants: an offset is part of the value.
    return parsed.tzinfo is not None


class Contract:
    """Looks up an operation's documented responses and checks a response."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._operations: dict[str, dict[str, Any]] = {}
        self._validators: dict[tuple[str, int], Any] = {}
        for methods in document["paths"].values():
            for op in methods.values():
                if isinstance(op, dict) and "operationId" in op:
                    self._operations[op["operationId"]] = op

    def _response(self, operation_id: str, status: int) -> dict[str, Any]:
        responses = self._operations[operation_id]["responses"]
        spec = responses.get(str(status))
        if spec is None:
            documented = ", ".join(sorted(responses))
            raise ContractError(f"status {status} is not one {operation_id} answers ({documented})")
        ref = spec.get("$ref")
        if ref:
            spec = self.document["components"]["responses"][ref.rsplit("/", 1)[-1]]
        result: dict[str, Any] = spec
        return result

    def _validator(self, operation_id: str, status: int) -> Any:
        jsonschema = _jsonschema()
        if (operation_id, status) in self._validators:
            return self._validators[operation_id, status]
        schema = self._response(operation_id, status)["content"]["application/json"]["schema"]
        # Wrapping the response schema in a document that also holds the
        # components lets its `#/components/...` references resolve as written.
        wrapped = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.document["components"],
            **schema,
        }
        checker = jsonschema.FormatChecker(formats=())
        checker.checks("date-time")(_is_datetime)
        validator = jsonschema.Draft202012Validator(wrapped, format_checker=checker)
        self._validators[operation_id, status] = validator
        return validator

    def check(self, operation_id: str, response: httpx.Response) -> Any:
        """Return the response's JSON body (or None) if the contract allows
        it, else raise ContractError saying what is wrong."""
        spec = self._response(operation_id, response.status_code)
        content: dict[str, Any] = spec.get("content") or {}
        if not content:
            if response.content:
                raise ContractError(f"status {response.status_code} must have no body")
            return None
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if media not in content:
            raise ContractError(f"content-type {media!r}, expected one of {sorted(content)}")
        if media != "application/json":
            return None
        try:
            body = response.json()
        except ValueError:
            raise ContractError("the body is not JSON") from None
        exceptions = _jsonschema().exceptions
        validator = self._validator(operation_id, response.status_code)
        # Each top-level error narrowed to its most telling cause (a oneOf
        # failure names the field of the closest branch), up to three of them.
        problems = [exceptions.best_match([e]) for e in validator.iter_errors(body)]
        if problems:
            raise ContractError("; ".join(_describe(p) for p in problems[:3]))
        return body


def _describe(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "body"
    message = str(error.message)
    return f"{where}: {message if len(message) < 160 else message[:157] + '...'}"


def load_contract() -> Contract:
    return _load()


@functools.cache
def _load() -> Contract:
    _jsonschema()  # fail here, once, rather than in every check
    return Contract(json.loads(_contract_text()))
