"""Schemathesis against the live server on the real engine: generated
requests (valid and not) must get answers the contract allows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from live import Live

from arker import Arker

CONTRACT = Path(__file__).resolve().parents[2] / "contract" / "openapi.json"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


def _toml(value: object) -> str:
    return json.dumps(value)  # TOML basic strings and integers are JSON-compatible


def test_schemathesis_finds_nothing(live: Live, arker: Arker, tmp_path: Path) -> None:
    with arker.vm("busybox").fork(name="fuzzed") as vm:
        run = vm.run("echo fuzz")
        vm.sync.write_file("/home/user/f.txt", b"f")
        # Known ids so the generated requests reach real VMs, runs and files, not
        # only 404s; DELETE keeps generated ids so it cannot delete this VM early.
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            "\n".join(
                [
                    # A fuzzed port has nothing listening in the VM: the documented
                    # answer is 502 `unavailable` (status and body are still checked);
                    # any other 5xx there is still a server error.
                    "[[operations]]",
                    'include-path-regex = "/ports/"',
                    "checks.not_a_server_error.expected-statuses = "
                    '["1XX", "2XX", "3XX", "4XX", "502"]',
                    "[[operations]]",
                    'include-name = "POST /v1/vms/{source}/fork"',
                    f"parameters = {{ source = {_toml('busybox')} }}",
                    *(
                        line
                        for op in (
                            "POST /v1/vms/{vm_id}/runs",
                            "GET /v1/vms/{vm_id}",
                            "GET /v1/vms/{vm_id}/files",
                            "PUT /v1/vms/{vm_id}/files",
                        )
                        for line in (
                            "[[operations]]",
                            f"include-name = {_toml(op)}",
                            f"parameters = {{ vm_id = {_toml(vm.vm_id)} }}",
                        )
                    ),
                    *(
                        line
                        for op in (
                            "GET /v1/vms/{vm_id}/runs/{run_id}",
                            "POST /v1/vms/{vm_id}/runs/{run_id}/cancel",
                        )
                        for line in (
                            "[[operations]]",
                            f"include-name = {_toml(op)}",
                            f"parameters = {{ vm_id = {_toml(vm.vm_id)}, "
                            f"run_id = {_toml(run.run_id)} }}",
                        )
                    ),
                ]
            )
            + "\n"
        )
        st = Path(sys.executable).parent / "st"
        proc = subprocess.run(
            [
                str(st),
                "--config-file",
                str(config),
                "run",
                str(CONTRACT),
                "--url",
                live.url,
                "--header",
                f"Authorization: Bearer {live.keys['acme']}",
                "--checks",
                CHECKS,
                "--max-examples",
                "15",
                "--seed",
                "20261128",
                "--request-timeout",
                "60",
                "--max-time",  # the fuzzing phases run until this budget is spent
                "45",
                "--warnings",
                "off",
                # /mcp speaks the MCP transport (its SDK's answers, described in
                # the contract only as such); tests/e2e/test_mcp.py drives it.
                "--exclude-path",
                "/mcp",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
