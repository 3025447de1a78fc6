"""Which endpoint a call goes to.

    region "aws-us-west-2"
      normal goldens and VM ids   -> https://aws-us-west-2.arker.ai
      golden "arkuntu", burst ids -> https://aws-burst-us-west-2.arker.ai/api

A burst VM id is a 26-character Crockford ULID, `_`, and a lowercase region
suffix (`01KQH2ADR3DCAJF06N4R453WPJ_uswe`). `base_url` and `burst_base_url`
override the region's hosts; with only `base_url`, burst traffic goes there too.
Explicit arguments beat the environment: ARKER_REGION and ARKER_BASE_URL are
read only when neither `region` nor `base_url` is passed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from arker.errors import ArkerError, ErrorCode

__all__ = ["BURST_GOLDENS", "Endpoints", "is_burst_vm_id", "resolve_api_key", "resolve_endpoints"]

BURST_GOLDENS = frozenset({"arkuntu"})

# Crockford base32 has no I, L, O or U; a ULID's first character is at most 7.
_BURST_VM_ID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}_[a-z][a-z0-9]*")
_REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)+")
_NO_REGION = (
    "no Arker endpoint: pass region= (for example 'aws-us-west-2') or base_url=, "
    "or set ARKER_REGION or ARKER_BASE_URL"
)


def is_burst_vm_id(vm_id: str) -> bool:
    """True for a VM id that lives on a burst endpoint (a ULID with a region suffix)."""
    return _BURST_VM_ID.fullmatch(vm_id) is not None


@dataclass(frozen=True)
class Endpoints:
    """The two base URLs of a client, without trailing slashes."""

    normal: str
    burst: str

    def for_source(self, source: str) -> str:
        """The base URL for a golden name or a VM id."""
        if source in BURST_GOLDENS or is_burst_vm_id(source):
            return self.burst
        return self.normal


def resolve_api_key(api_key: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The key to send: the argument, else ARKER_API_KEY, else AUTH_KEY."""
    key = api_key or environ.get("ARKER_API_KEY") or environ.get("AUTH_KEY")
    if not key:
        raise ArkerError(
            ErrorCode.UNAUTHORIZED,
            "no API key: pass api_key= or set ARKER_API_KEY (or AUTH_KEY)",
        )
    return key


def resolve_endpoints(
    region: str | None,
    base_url: str | None,
    burst_base_url: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Endpoints:
    """Endpoints from the arguments, falling back to the environment."""
    if not region and not base_url:
        region = environ.get("ARKER_REGION")
        base_url = environ.get("ARKER_BASE_URL")
    burst = _normalise_url(burst_base_url, "burst_base_url") if burst_base_url else None
    if base_url:
        normal = _normalise_url(base_url, "base_url")
        return Endpoints(normal=normal, burst=burst or normal)
    if not region:
        raise ArkerError(ErrorCode.INVALID_REQUEST, _NO_REGION)
    normal, region_burst = _region_urls(region)
    return Endpoints(normal=normal, burst=burst or region_burst)


def _region_urls(region: str) -> tuple[str, str]:
    if _REGION.fullmatch(region) is None:
        raise ArkerError(
            ErrorCode.INVALID_REQUEST,
            f"region must look like 'aws-us-west-2' (provider-location): {region!r}",
        )
    provider, location = region.split("-", 1)
    return f"https://{region}.arker.ai", f"https://{provider}-burst-{location}.arker.ai/api"


def _normalise_url(url: str, name: str) -> str:
    url = url.strip().rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{name} is not a URL: {url!r}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ArkerError(
            ErrorCode.INVALID_REQUEST, f"{name} must be an http(s) URL with a host: {url!r}"
        )
    if parsed.query or parsed.fragment:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{name} must have no query or fragment")
    return url
