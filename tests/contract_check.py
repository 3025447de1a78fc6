"""Check any HTTP response against contract/openapi.json: the status is listed
for that path and method, the content type is the listed one, the body matches
the listed schema (including the error shape), and listed headers are present.

    from contract_check import check
    check(response)            # path and method are read from response.request
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["ContractError", "check", "operation_for"]

CONTRACT_PATH = Path(__file__).resolve().parent.parent / "contract" / "openapi.json"
URI = "urn:arker:contract"


class ContractError(AssertionError):
    pass


@cache
def _contract() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(CONTRACT_PATH.read_text())
    return loaded


@cache
def _registry() -> Registry[Any]:
    return Registry().with_resource(URI, DRAFT202012.create_resource(_contract()))


@cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    out = []
    for template in _contract()["paths"]:
        # {path} (a VM port's relayed path) may be empty and may hold "/".
        pattern = re.escape(template).replace(r"\{path\}", ".*")
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
        out.append((re.compile(f"(?:.*?){pattern}$"), template))
    # longest first: /v1/vms/{id}/runs before /v1/vms/{id}; a {path} template
    # last, so .../ports/{port}/token is not taken for a relayed path
    out.sort(key=lambda p: ("{path}" in p[1], -len(p[1])))
    return out


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    for pattern, template in _templates():
        if pattern.match(path):
            op = _contract()["paths"][template].get(method.lower())
            return (template, op) if op is not None else None
    return None


def _resolve(obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        node: Any = _contract()
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    # The contract's JSON bodies are all $refs into components; resolve them
    # against the whole document so nested $refs work too.
    root = {"$ref": URI + schema["$ref"]} if "$ref" in schema else schema
    validator = jsonschema.Draft202012Validator(
        root, registry=_registry(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        raise ContractError(
            f"body breaks the contract: {errors[0].message} at {list(errors[0].path)}"
        )


def check(response: httpx.Response, *, method: str | None = None, path: str | None = None) -> Any:
    """Raise ContractError unless `response` is one the contract allows; return
    the decoded JSON body (or the bytes for binary bodies)."""
    method = method or response.request.method
    path = path or response.request.url.path
    found = operation_for(method, path)
    if found is None:
        # Paths or methods outside the contract must still answer the error shape.
        if response.status_code not in (404, 405):
            raise ContractError(
                f"{method} {path} is not in the contract, got {response.status_code}"
            )
        _validate(response.json(), {"$ref": "#/components/schemas/Error"})
        if "x-request-id" not in response.headers:
            raise ContractError("no X-Request-Id header")
        return response.json()
    template, op = found
    responses = op["responses"]
    if "x-arker-relayed" in response.headers and "default" in responses:
        spec = responses["default"]  # the VM's app answered, whatever its status
    else:
        spec = responses.get(str(response.status_code)) or responses.get("default")
    if spec is None:
        raise ContractError(
            f"{method} {template}: status {response.status_code} is not in the contract "
            f"(listed: {sorted(responses)}); body {response.text[:300]!r}"
        )
    spec = _resolve(spec)
    for name in spec.get("headers", {}):
        if name.lower() not in response.headers:
            raise ContractError(f"{method} {template} {response.status_code}: no {name} header")
    content = spec.get("content")
    if not content:
        if response.content:
            raise ContractError(f"{method} {template} {response.status_code}: expected no body")
        return None
    ctype = response.headers.get("content-type", "").split(";")[0].strip()
    if "*/*" in content:
        return response.content  # any content: a VM app's answer
    if ctype not in content:
        raise ContractError(
            f"{method} {template} {response.status_code}: content type {ctype!r}, "
            f"listed {sorted(content)}"
        )
    if ctype == "application/json":
        body = response.json()
        _validate(body, content[ctype]["schema"])
        return body
    if ctype == "text/plain":
        return response.text
    return response.content
