"""What the SDK sends matches contract/openapi.json, and so do the scripted
replies the other SDK tests use (so they test against the real wire shape)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_fakes import KEY, REGION, VM_ID, completed, ok, output, status, vm, written
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from arker import Arker

SPEC: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "contract" / "openapi.json").read_text()
)
REGISTRY = Registry().with_resource("urn:contract", DRAFT202012.create_resource(SPEC))
# Sent on every mutating call (harmless where the contract does not declare it:
# DELETE and cancel are idempotent by nature, PUT has Upload-Id).
SDK_HEADERS = {
    "authorization",
    "user-agent",
    "content-type",
    "content-length",
    "host",
    "accept",
    "accept-encoding",
    "connection",
    "idempotency-key",
}


def check(schema_ref: str, instance: Any) -> None:
    Draft202012Validator({"$ref": "urn:contract" + schema_ref}, registry=REGISTRY).validate(
        instance
    )


def operation(request: httpx.Request) -> tuple[str, dict[str, Any]]:
    for template, item in SPEC["paths"].items():
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        if re.fullmatch(pattern, request.url.path) and request.method.lower() in item:
            return template, item[request.method.lower()]
    raise AssertionError(f"{request.method} {request.url.path} is not in the contract")


REPLIES: dict[tuple[str, str], httpx.Response] = {
    ("GET", "/v1/goldens"): ok(
        {"items": [{"name": "debian", "description": None, "created_at": "2026-11-28T18:00:00Z"}]}
    ),
    ("GET", "/v1/vms"): ok({"items": [vm()], "total": 1}),
    ("GET", "/v1/vms/{vm_id}"): ok(vm()),
    ("DELETE", "/v1/vms/{vm_id}"): httpx.Response(204),
    ("POST", "/v1/vms/{source}/fork"): ok(vm(parent_id="01KQH2ADR3DCAJF06N4R453WPK"), 201),
    ("GET", "/v1/vms/{vm_id}/runs/{run_id}"): ok(status("completed", b"x", exit_code=0)),
    ("POST", "/v1/vms/{vm_id}/runs/{run_id}/cancel"): ok(status("cancelled")),
    ("GET", "/v1/vms/{vm_id}/files"): httpx.Response(200, content=b"bytes"),
    ("PUT", "/v1/vms/{vm_id}/files"): ok(written()),
    ("POST", "/v1/vms/{vm_id}/ports/{port}/token"): ok(
        {"url": "http://h/v1/vms/x/ports/8000/?arker_token=t", "expires_at": "2026-12-03T10:00:00Z"}
    ),
}


def handler(request: httpx.Request) -> httpx.Response:
    template, _ = operation(request)
    if template.endswith("/runs"):
        background = json.loads(request.content).get("background")
        return ok({"type": "started", "run_id": "r"}, 202) if background else ok(completed())
    return REPLIES[(request.method, template)]


@pytest.fixture
def sent() -> list[httpx.Request]:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    client = Arker(
        api_key=KEY, region=REGION, http_client=httpx.Client(transport=httpx.MockTransport(record))
    )
    client.goldens()
    client.list(limit=5, offset=1)
    child = client.vm("debian").fork(name="a-b.c", durable=True, idempotency_key="k1")
    child.get()
    child.run("echo", timeout_s=2.5, env={"X_1": "y"}, cwd="/home/user", stdin=b"\x00", user="user")
    child.run("sleep 1", background=True)
    child.run_status("r")
    child.cancel_run("r")
    child.sync.write_file("/home/user/f", b"data")
    child.sync.read_file("/home/user/f")
    child.port_token(8000, ttl_s=60)
    child.delete()
    return requests


def test_every_operation_is_exercised(sent: list[httpx.Request]) -> None:
    used = {(r.method, operation(r)[0]) for r in sent}
    assert used == set(REPLIES) | {("POST", "/v1/vms/{vm_id}/runs")}


def test_requests_match_the_contract(sent: list[httpx.Request]) -> None:
    for request in sent:
        template, op = operation(request)
        declared = {p["name"].lower() for p in op.get("parameters", []) if "name" in p}
        declared |= {
            SPEC["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]["name"].lower()
            for p in op.get("parameters", [])
            if "$ref" in p
        }
        extra = set(request.headers) - SDK_HEADERS - declared
        assert not extra, (template, extra)
        for name in request.url.params:
            item = SPEC["paths"][template]
            names = {
                p["name"]
                for p in item.get("parameters", []) + op.get("parameters", [])
                if "name" in p
            }
            assert name in names, (template, name)
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            check(content["application/json"]["schema"]["$ref"], json.loads(request.content))
        elif request.content:
            assert "application/octet-stream" in content, template


def test_mutating_calls_carry_their_keys(sent: list[httpx.Request]) -> None:
    for request in sent:
        mutating = request.method != "GET"
        assert ("idempotency-key" in request.headers) is mutating, request.url
        assert ("upload-id" in request.headers) is (request.method == "PUT")


def test_scripted_replies_match_the_contract() -> None:
    samples = [(template, method, reply) for (method, template), reply in REPLIES.items()]
    samples += [
        ("/v1/vms/{vm_id}/runs", "post", ok(completed(b"o", b"e", exit_code=1))),
        ("/v1/vms/{vm_id}/runs", "post", ok(output("timed_out", timeout_s=1.0))),
        ("/v1/vms/{vm_id}/runs", "post", ok(output("cancelled"))),
        ("/v1/vms/{vm_id}/runs", "post", ok({"type": "started", "run_id": "r"}, 202)),
    ]
    for template, method, reply in samples:
        responses = SPEC["paths"][template][method.lower()]["responses"]
        declared = responses[str(reply.status_code)]
        media = declared.get("content", {})
        if "application/json" in media:
            check(media["application/json"]["schema"]["$ref"], reply.json())
        else:
            assert not reply.content or "application/octet-stream" in media
    assert VM_ID  # the samples are built around this id


def test_the_schema_check_can_fail() -> None:
    with pytest.raises(ValidationError):
        check("#/components/schemas/RunRequest", {"command": "", "shell": "bash"})
