"""Shared storage fixtures: a real btrfs pool (a sparse loop image in a fresh
tmp dir) and the busybox golden in it. Each fixture closes what it opened, so
no mount or loop device outlives a test, even a failing one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.engine.goldens import build_busybox
from arker.engine.pool import Pool

# Small and sparse: a test pool takes only the space its files do.
TEST_IMAGE_BYTES = 2 * 2**30


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    """An opened Pool in a fresh data dir; closed (unmounted, loop detached) after."""
    p = Pool(tmp_path / "data", image_size_bytes=TEST_IMAGE_BYTES)
    p.open()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def busybox_golden(pool: Pool) -> str:
    """The name of the busybox golden, built in `pool`."""
    build_busybox(pool)
    return "busybox"
