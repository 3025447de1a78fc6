"""Who may reach a VM's port, and what of the request reaches it: the
preview host's name, the port token (query or cookie) or the API key, and
the headers passed on. Shared by the HTTP relay (`ports.py`) and the
WebSocket and TCP relays (`port_sockets.py`).
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

from starlette.requests import HTTPConnection

from arker.errors import ArkerError, ErrorCode
from arker.server.auth import KEY_PREFIX, Authenticator
from arker.server.service import Service

__all__ = [
    "COOKIE",
    "HOP_BY_HOP",
    "PREVIEW_PATH",
    "TOKEN_PARAM",
    "authorise",
    "bad_gateway",
    "check_port",
    "forward_headers",
    "preview_of",
    "preview_target",
    "target_of",
    "token_cookie",
]

PREVIEW_PATH = "/_preview"
TOKEN_PARAM = "arker_token"
COOKIE = "arker_port_token"
# Not passed on (RFC 9110 7.6.1), with what the relay sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_LABEL = re.compile(r"([0-9]{1,5})-([0-9a-z]+(?:_[0-9a-z-]+)?)")


# -- preview hosts
def preview_target(host: str, domain: str, burst_suffix: str | None) -> tuple[int, str] | None:
    """(port, vm_id) for a Host of `{port}-{vm_id}.{domain}`, else None.
    Browsers lower-case host names and VM ids are upper-case ULIDs: the id is
    mapped back (and a burst suffix to its configured spelling)."""
    name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
    name, suffix = name.lower().rstrip("."), "." + domain.lower().strip(".")
    if not name.endswith(suffix):
        return None
    found = _LABEL.fullmatch(name[: -len(suffix)])
    if found is None:
        return None
    ulid, _, rest = found.group(2).partition("_")
    vm_id = ulid.upper()
    if rest:
        vm_id += "_" + (burst_suffix if burst_suffix and burst_suffix.lower() == rest else rest)
    return int(found.group(1)), vm_id


def preview_of(conn: HTTPConnection) -> tuple[int, str] | None:
    found: tuple[int, str] | None = conn.scope.get("state", {}).get("preview")
    return found


# -- who is asking
async def authorise(
    conn: HTTPConnection, svc: Service, vm_id: str, port: int
) -> tuple[str, str | None, float]:
    """(org, a token to set as the cookie or None, its expiry). A token in
    the query wins, then the cookie a token set, then the API key."""
    token = conn.query_params.get(TOKEN_PARAM)
    if token is not None:
        org, expires_at = svc.port_token_org(token, vm_id, port)
        return org, token, expires_at
    cookie = conn.cookies.get(COOKIE)
    if cookie is not None:
        org, _ = svc.port_token_org(cookie, vm_id, port)
        return org, None, 0.0
    auth: Authenticator = conn.app.state.auth
    org = await auth.org_for(conn.headers.get("authorization"))
    conn.state.org = org
    return org, None, 0.0


def check_port(port: int) -> int:
    # The routes' Path(ge=1, le=65535) says the same for the /ports/ paths; a
    # preview host's port is parsed from its name.
    if not 1 <= port <= 65535:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"port: must be 1..65535, not {port}", 422)
    return port


def forward_headers(
    conn: HTTPConnection, by_key: bool, extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The request's headers for the VM's app: hop-by-hop ones, the API key
    and the port token's cookie removed; X-Forwarded-* added."""
    named = {
        part.strip().lower().encode()
        for value in conn.headers.getlist("connection")
        for part in value.split(",")
    }
    out: list[tuple[bytes, bytes]] = []
    for name, value in conn.scope["headers"]:
        if name in HOP_BY_HOP or name in named or name.startswith(b"sec-websocket-"):
            continue
        if name == b"authorization" and (by_key or KEY_PREFIX.encode() in value):
            continue  # the API key never reaches the VM
        if name == b"cookie":
            kept = [
                c
                for c in value.split(b";")
                if c.strip().partition(b"=")[0] != COOKIE.encode() and c.strip()
            ]
            if not kept:
                continue
            value = b";".join(kept).strip()
        if name.startswith(b"x-forwarded-") and name != b"x-forwarded-for":
            continue
        out.append((name, value))
    client = conn.client.host if conn.client else ""
    earlier = conn.headers.get("x-forwarded-for")
    host = conn.headers.get("host", "")
    out = [(n, v) for n, v in out if n != b"x-forwarded-for"]
    out += [
        (b"x-forwarded-for", (f"{earlier}, {client}" if earlier else client).encode()),
        (b"x-forwarded-host", host.encode()),
        (b"x-forwarded-proto", b"https" if conn.url.scheme in ("https", "wss") else b"http"),
        *extra,
    ]
    return out


def target_of(conn: HTTPConnection, path: str) -> str:
    """The app's path and query, the token parameter removed."""
    query = b"&".join(
        part
        for part in conn.scope.get("query_string", b"").split(b"&")
        if part and part.partition(b"=")[0] != TOKEN_PARAM.encode()
    )
    target = quote("/" + path.lstrip("/"), safe="/:@!$&'()*+,;=-._~%")
    return target + ("?" + query.decode("latin-1") if query else "")


def token_cookie(
    conn: HTTPConnection, token: str, expires_at: float, vm_id: str, port: int
) -> bytes:
    """Set-Cookie for the token: the preview host's whole site, or this port's
    path under the API; HttpOnly so the app's scripts cannot read it."""
    if preview_of(conn) is not None:
        path = "/"
    else:
        prefix = conn.scope.get("state", {}).get("api_prefix", "")
        path = f"{prefix}/v1/vms/{quote(vm_id, safe='')}/ports/{port}/"
    max_age = max(0, int(expires_at - time.time()))
    secure = "; Secure" if conn.url.scheme == "https" else ""
    return (
        f"{COOKIE}={token}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ).encode()


def bad_gateway(message: str) -> ArkerError:
    return ArkerError(ErrorCode.UNAVAILABLE, message, 502)
