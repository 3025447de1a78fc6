"""The test tree is not a package: two test modules with one basename would
stop the whole run at collection. Catch it here, by name, instead."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_test_modules_have_unique_basenames() -> None:
    names = Counter(p.name for p in HERE.rglob("*.py") if p.name != "conftest.py")
    assert not [n for n, k in names.items() if k > 1]
