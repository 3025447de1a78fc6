"""contract/openapi.json is a valid OpenAPI document, and its error codes and
statuses are exactly those of arker.errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from arker.errors import STATUS_BY_CODE, ErrorCode

CONTRACT = Path(__file__).resolve().parent.parent / "contract" / "openapi.json"
CLIENT_ONLY = {ErrorCode.CONNECTION_ERROR, ErrorCode.TIMEOUT, ErrorCode.INVALID_RESPONSE}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(CONTRACT.read_text())
    return loaded


@pytest.fixture(scope="module")
def error_code(spec: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = spec["components"]["schemas"]["ErrorCode"]
    return schema


def test_contract_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)  # raises on an invalid document
    assert spec["openapi"].startswith("3.1")


def test_every_server_code_is_in_the_contract_with_its_status(error_code: dict[str, Any]) -> None:
    statuses = error_code["x-arker-status"]
    for code, status in STATUS_BY_CODE.items():
        assert code.value in error_code["enum"], code
        assert status in statuses[code.value], (code, status, statuses[code.value])


def test_every_contract_code_is_known_with_its_status(error_code: dict[str, Any]) -> None:
    by_value = {code.value: status for code, status in STATUS_BY_CODE.items()}
    assert set(error_code["x-arker-status"]) == set(error_code["enum"])
    for value in error_code["enum"]:
        assert value in by_value, f"{value} is in the contract but not in STATUS_BY_CODE"
        assert by_value[value] in error_code["x-arker-status"][value]


def test_client_only_codes_stay_off_the_wire(error_code: dict[str, Any]) -> None:
    assert set(ErrorCode) - set(STATUS_BY_CODE) == CLIENT_ONLY
    assert not {code.value for code in CLIENT_ONLY} & set(error_code["enum"])


def test_every_error_status_of_an_operation_has_a_code(spec: dict[str, Any]) -> None:
    # A status an operation may answer with must be one some code is sent with.
    allowed = {
        s
        for statuses in spec["components"]["schemas"]["ErrorCode"]["x-arker-status"].values()
        for s in statuses
    }
    seen = set()
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method in ("parameters", "summary", "description"):
                continue
            for status in operation["responses"]:
                if status == "default":  # a VM app's answer through a port, any status
                    continue
                if int(status) >= 400:
                    seen.add(int(status))
                    assert int(status) in allowed, (method, status)
    assert seen  # the contract does declare error responses
