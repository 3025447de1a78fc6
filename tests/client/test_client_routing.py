"""Endpoints from arguments and environment, and the burst routing rule."""

from __future__ import annotations

import pytest
from client_fakes import BURST, BURST_VM_ID, KEY, NORMAL, VM_ID

from arker import Arker, ArkerError, AsyncArker, ErrorCode
from arker.client import is_burst_vm_id
from arker.client._routing import Endpoints, resolve_endpoints


@pytest.mark.parametrize(
    ("source", "endpoint"),
    [
        ("debian", NORMAL),
        ("ubuntu", NORMAL),
        ("arkuntu", BURST),
        (VM_ID, NORMAL),
        (BURST_VM_ID, BURST),
        ("01KQH2ADR3DCAJF06N4R453WPJ_USWE", NORMAL),  # suffix must be lowercase
        ("01KQH2ADR3DCAJF06N4R453WP_uswe", NORMAL),  # 25 characters: not a ULID
        ("01KQH2ADR3DCAJF06N4R453WPI_uswe", NORMAL),  # I is not Crockford base32
    ],
)
def test_region_routing_table(source: str, endpoint: str) -> None:
    assert resolve_endpoints("aws-us-west-2", None, None, {}).for_source(source) == endpoint


@pytest.mark.parametrize(
    ("region", "normal", "burst"),
    [
        ("aws-us-west-2", NORMAL, BURST),
        (
            "aws-eu-central-1",
            "https://aws-eu-central-1.arker.ai",
            "https://aws-burst-eu-central-1.arker.ai/api",
        ),
        ("gcp-asia-1", "https://gcp-asia-1.arker.ai", "https://gcp-burst-asia-1.arker.ai/api"),
    ],
)
def test_burst_host_is_derived_from_any_region(region: str, normal: str, burst: str) -> None:
    assert resolve_endpoints(region, None, None, {}) == Endpoints(normal, burst)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("r-x", "http://h:1/api/", None), Endpoints("http://h:1/api", "http://h:1/api")),
        ((None, "https://h//", "https://b/api/"), Endpoints("https://h", "https://b/api")),
        (("aws-us-west-2", None, "http://b"), Endpoints(NORMAL, "http://b")),
    ],
)
def test_overrides_and_trailing_slashes(
    args: tuple[str | None, str | None, str | None], expected: Endpoints
) -> None:
    assert resolve_endpoints(*args, environ={}) == expected


@pytest.mark.parametrize("region", ["local", "AWS-us-west-2", "aws us", "-aws"])
def test_bad_region(region: str) -> None:
    with pytest.raises(ArkerError) as caught:
        resolve_endpoints(region, None, None, {})
    assert caught.value.code is ErrorCode.INVALID_REQUEST and region in caught.value.message


@pytest.mark.parametrize("url", ["ftp://h", "h.example", "http://h/?q=1", "http://"])
def test_bad_base_url(url: str) -> None:
    with pytest.raises(ArkerError) as caught:
        resolve_endpoints(None, url, None, {})
    assert caught.value.code is ErrorCode.INVALID_REQUEST


def test_burst_vm_ids() -> None:
    assert is_burst_vm_id(BURST_VM_ID)
    assert not is_burst_vm_id(VM_ID)
    assert not is_burst_vm_id("arkuntu")


@pytest.mark.parametrize("cls", [Arker, AsyncArker])
def test_no_region_is_a_clear_error(cls: type[Arker] | type[AsyncArker]) -> None:
    with pytest.raises(ArkerError) as caught:
        cls(api_key=KEY)
    message = caught.value.message
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    for hint in ("region=", "base_url=", "ARKER_REGION", "ARKER_BASE_URL"):
        assert hint in message


@pytest.mark.parametrize("cls", [Arker, AsyncArker])
def test_no_api_key_is_a_clear_error(cls: type[Arker] | type[AsyncArker]) -> None:
    with pytest.raises(ArkerError) as caught:
        cls(region="aws-us-west-2")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert "api_key=" in caught.value.message and "ARKER_API_KEY" in caught.value.message


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_KEY", "from-auth-key")
    monkeypatch.setenv("ARKER_REGION", "aws-eu-west-1")
    client = Arker()
    assert client._headers["Authorization"] == "Bearer from-auth-key"
    assert client.base_url == "https://aws-eu-west-1.arker.ai"
    monkeypatch.setenv("ARKER_API_KEY", "from-arker-api-key")  # beats AUTH_KEY
    monkeypatch.setenv("ARKER_BASE_URL", "http://dev:8740/")  # beats ARKER_REGION
    client = Arker()
    assert client._headers["Authorization"] == "Bearer from-arker-api-key"
    assert client.base_url == client.burst_base_url == "http://dev:8740"


def test_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARKER_API_KEY", "env-key")
    monkeypatch.setenv("ARKER_BASE_URL", "http://dev:8740")
    client = Arker(api_key="arg-key", region="aws-us-west-2")
    assert client._headers["Authorization"] == "Bearer arg-key"
    assert (client.base_url, client.burst_base_url) == (NORMAL, BURST)


def test_bad_timeout_is_refused() -> None:
    with pytest.raises(ArkerError) as caught:
        Arker(api_key=KEY, region="aws-us-west-2", timeout_s=0)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
