"""The server's settings: one frozen value built by `arker serve` (or a test)."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Settings"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    data_dir: str = "/var/lib/arker"
    database_url: str | None = None  # None: SQLite in data_dir
    region: str = "local"
    api_prefix: str = ""
    burst_suffix: str | None = None
    max_json_bytes: int = 16 * MIB
    max_file_bytes: int = 1024 * MIB
    output_cap_bytes: int = 8 * MIB  # per stream, in an answer
    stored_output_bytes: int = 1 * MIB  # per stream, kept in the database (head + tail)
    auth_cache_s: float = 2.0  # how long a revoked key may still pass
    engine_threads: int = 32  # blocking engine calls at once (waits excluded)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{os.path.join(self.data_dir, 'arker.db')}"
