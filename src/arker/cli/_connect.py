"""What every client command of `arker` shares: the options that configure an
`Arker` client like the SDK (--api-key/--region/--base-url, else
ARKER_API_KEY, ARKER_REGION, ARKER_BASE_URL), and the client they make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from arker import Arker

__all__ = ["ApiKey", "BaseUrl", "Json", "Region", "RunId", "VmId", "connect"]

_OPTION_NAMES = (("api_key=", "--api-key"), ("region=", "--region"), ("base_url=", "--base-url"))

ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", help="API key (else ARKER_API_KEY, AUTH_KEY)", show_default=False),
]
Region = Annotated[
    str | None,
    typer.Option("--region", help="Region, e.g. aws-us-west-2 (else ARKER_REGION)"),
]
BaseUrl = Annotated[
    str | None,
    typer.Option("--base-url", help="API base URL, with any /api prefix (else ARKER_BASE_URL)"),
]
VmId = Annotated[str, typer.Argument(metavar="VM", help="The VM id.")]
RunId = Annotated[str, typer.Argument(metavar="RUN", help="The run id.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document, for scripts.")]


def connect(
    api_key: str | None, region: str | None, base_url: str | None, timeout_s: float = 60.0
) -> Arker:
    from arker import Arker, ArkerError

    try:
        return Arker(api_key, region=region, base_url=base_url, timeout_s=timeout_s)
    except ArkerError as exc:
        # The SDK names its arguments; a command line user has options.
        message = exc.message
        for arg, option in _OPTION_NAMES:
            message = message.replace(arg, option)
        raise ArkerError(exc.code, message, exc.status) from None
