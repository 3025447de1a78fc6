"""Port tokens: what lets a browser open a VM's port without the API key.

    <payload>.<mac>    both base64url; payload = JSON [org, vm_id, port, expires_at]
                       mac = HMAC-SHA256(secret, "arker-port-v1." + payload)

The secret is 32 random bytes in <data_dir>/port-token.key (mode 0600), made
on first start; replacing the file revokes every token handed out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

__all__ = ["PortTokens"]

KEY_FILE = "port-token.key"
_DOMAIN = b"arker-port-v1."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PortTokens:
    def __init__(self, data_dir: str) -> None:
        self._path = Path(data_dir) / KEY_FILE
        self._key: bytes | None = None

    def open(self) -> None:
        """Read the secret, or make it (0600, never readable by others)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
        key = self._path.read_bytes()
        if len(key) < 32:
            raise RuntimeError(f"{self._path} holds {len(key)} bytes, not a 32-byte secret")
        self._key = key

    def _mac(self, payload: str) -> bytes:
        if self._key is None:
            raise RuntimeError("port tokens are not open")
        return hmac.new(self._key, _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest()

    def issue(self, org: str, vm_id: str, port: int, ttl_s: int) -> tuple[str, float]:
        """(token, expires_at in unix seconds)."""
        expires_at = float(int(time.time()) + ttl_s)
        payload = _b64(json.dumps([org, vm_id, port, expires_at], separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._mac(payload))}", expires_at

    def verify(self, token: str, vm_id: str, port: int) -> tuple[str, float] | None:
        """(org, expires_at) of a token made here for this VM and port, not
        yet expired; None for anything else."""
        payload, sep, mac = token.partition(".")
        if not sep or not payload.isascii() or not mac.isascii():
            return None
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(payload)):
                return None
            org, t_vm, t_port, expires_at = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return None
        if t_vm != vm_id or t_port != port or not expires_at > time.time():
            return None
        return str(org), float(expires_at)
