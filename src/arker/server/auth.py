"""API keys: minted as `ark_live_<random>`, stored as sha256 (the keys carry 256
bits of randomness, so a slow hash buys nothing), checked with a short cache so
the hot path does not query the database on every request."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from arker.errors import ArkerError, ErrorCode
from arker.server.store import ApiKey, Database

__all__ = ["Authenticator", "KeyRecord", "create_key", "hash_key", "list_keys", "revoke_key"]

KEY_PREFIX = "ark_live_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    prefix: str
    org: str
    name: str | None
    created_at: float
    revoked_at: float | None
    admin: bool = False  # may read /metrics


async def create_key(
    db: Database, org: str, name: str | None = None, *, admin: bool = False
) -> tuple[KeyRecord, str]:
    """Store a new key for `org`; return its record and the secret (shown once).
    An admin key may also read /metrics (the whole server's numbers)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id="key_" + secrets.token_hex(8),
        prefix=secret[: len(KEY_PREFIX) + 6],
        key_hash=hash_key(secret),
        org=org,
        name=name,
        created_at=time.time(),
        admin=admin,
    )
    async with db.session() as s:
        s.add(row)
        await s.commit()
    return _record(row), secret


async def list_keys(db: Database) -> list[KeyRecord]:
    async with db.session() as s:
        rows = (await s.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()
    return [_record(r) for r in rows]


async def revoke_key(db: Database, key_id: str) -> bool:
    """Revoke by id; False when there is no such key."""
    async with db.session() as s:
        res = await s.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
        await s.commit()
        if res.rowcount:  # type: ignore[attr-defined]
            return True
        return (await s.get(ApiKey, key_id)) is not None


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        row.id, row.prefix, row.org, row.name, row.created_at, row.revoked_at, bool(row.admin)
    )


class Authenticator:
    """Bearer header -> org. Valid keys are cached for `ttl_s`, so a revocation
    takes effect within that time; unknown keys are never cached."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[str, bool, float]] = {}

    async def org_for(self, authorization: str | None) -> str:
        org, _ = await self._key(authorization)
        return org

    async def caller(self, authorization: str | None) -> tuple[str, bool]:
        """(org, whether the key is an admin's)."""
        return await self._key(authorization)

    async def admin_for(self, authorization: str | None) -> str:
        """The org of an admin key; any other key (or none) is unauthorized."""
        org, admin = await self._key(authorization)
        if not admin:
            raise ArkerError(
                ErrorCode.UNAUTHORIZED,
                "/metrics needs an admin key (made with `arker keys create --admin`)",
            )
        return org

    async def _key(self, authorization: str | None) -> tuple[str, bool]:
        key = _bearer(authorization)
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        async with self._db.session() as s:
            row = await s.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if row is None or row.revoked_at is not None:
            self._cache.pop(digest, None)
            raise ArkerError(ErrorCode.UNAUTHORIZED, "the API key is unknown or revoked")
        if len(self._cache) > 10_000:
            self._cache.clear()  # a crude bound; keys are few in practice
        admin = bool(row.admin)
        self._cache[digest] = (row.org, admin, now + self._ttl_s)
        return row.org, admin


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise ArkerError(ErrorCode.UNAUTHORIZED, "no API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ArkerError(ErrorCode.UNAUTHORIZED, "the Authorization header must be 'Bearer <key>'")
    return token
