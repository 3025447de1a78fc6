"""`arker smoke`: checks a deployment's wire against contract/openapi.json.

    reports = run_smoke(targets_from_env())
    all(r.ok for r in reports)

Usable from tests and scripts without the command line; see `_checks.py` for
what is checked and `_contract.py` for how.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import httpx

from arker.errors import ArkerError, ErrorCode
from arker.smoke._checks import CHECKS, CheckResult, Target, TargetReport, smoke_target
from arker.smoke._contract import Contract, ContractError, load_contract

__all__ = [
    "CHECKS",
    "CheckResult",
    "Contract",
    "ContractError",
    "Target",
    "TargetReport",
    "load_contract",
    "run_smoke",
    "targets_from_env",
]


def _invalid(message: str) -> ArkerError:
    return ArkerError(ErrorCode.INVALID_REQUEST, message, status=0)


def targets_from_env(
    env: Mapping[str, str] | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    source: str | None = None,
    targets_json: str | None = None,
) -> list[Target]:
    """The deployments to check: ARKER_SMOKE_TARGETS (a JSON list of
    `{name, baseUrl, source}`, each optionally with its own `apiKey`), else
    one target from ARKER_BASE_URL and ARKER_SOURCE_VM. Arguments beat the
    environment."""
    env = os.environ if env is None else env
    key = api_key or env.get("ARKER_API_KEY") or env.get("AUTH_KEY")
    raw = targets_json or env.get("ARKER_SMOKE_TARGETS")
    if raw:
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise _invalid(f"ARKER_SMOKE_TARGETS is not JSON: {exc}") from None
        if not isinstance(items, list) or not items:
            raise _invalid("ARKER_SMOKE_TARGETS must be a non-empty JSON list")
        targets = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not all(
                isinstance(item.get(k), str) and item.get(k) for k in ("baseUrl", "source")
            ):
                raise _invalid(f"ARKER_SMOKE_TARGETS[{i}] needs string baseUrl and source")
            target_key = item.get("apiKey") or key
            if not target_key:
                raise _invalid(f"no API key for target {i}: set ARKER_API_KEY or apiKey")
            name = str(item.get("name") or item["baseUrl"])
            targets.append(Target(name, item["baseUrl"], item["source"], str(target_key)))
        return targets
    url = base_url or env.get("ARKER_BASE_URL")
    src = source or env.get("ARKER_SOURCE_VM")
    missing = [
        n
        for n, v in (("ARKER_BASE_URL", url), ("ARKER_SOURCE_VM", src), ("ARKER_API_KEY", key))
        if not v
    ]
    if missing or url is None or src is None or key is None:
        raise _invalid(f"set {', '.join(missing)} (or ARKER_SMOKE_TARGETS)")
    return [Target(url, url, src, key)]


def run_smoke(
    targets: Sequence[Target],
    *,
    timeout_s: float = 120.0,
    transport: httpx.BaseTransport | None = None,
) -> list[TargetReport]:
    """Check each target in turn (so that one's load does not skew another's
    latencies); each report says which checks passed and how long they took."""
    try:
        contract = load_contract()
    except ContractError as exc:  # the installation, not a deployment, is at fault
        raise ArkerError(ErrorCode.INTERNAL, str(exc), status=0) from None
    return [smoke_target(t, contract, timeout_s=timeout_s, transport=transport) for t in targets]
