"""The package surface, and the generated sync twin staying in step."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import arker

ROOT = Path(__file__).resolve().parents[2]
UNASYNC = ROOT / "scripts" / "unasync"


def test_public_names() -> None:
    for name in (
        "Arker",
        "AsyncArker",
        "ArkerError",
        "Computer",
        "AsyncComputer",
        "RetryPolicy",
        "ErrorCode",
        "CompletedRun",
        "TimedOutRun",
        "CancelledRun",
        "StartedRun",
        "RunResult",
        "RunStatus",
        "Vm",
        "VmPage",
        "Golden",
        "FileWritten",
    ):
        assert name in arker.__all__ and getattr(arker, name) is not None, name


def test_import_loads_no_server_engine_or_cli_code() -> None:
    # (rich is not listed: httpx itself imports it, for its own CLI, when installed.)
    code = (
        "import sys, arker\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'sqlalchemy', 'uvicorn', 'typer', 'alembic'} "
        "or m.split('.')[:2] in (['arker', 'server'], ['arker', 'engine'], ['arker', 'cli']))\n"
        "assert 'arker.client._sync' in sys.modules\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def run_unasync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = root / "scripts" / "unasync"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)


def test_generated_files_are_up_to_date() -> None:
    result = run_unasync(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_twin_and_regeneration_fixes_it(tmp_path: Path) -> None:
    twins = [*ROOT.glob("src/arker/client/_*sync.py"), *ROOT.glob("tests/client/test_*sync_*.py")]
    for path in [UNASYNC, ROOT / "pyproject.toml", *twins]:
        rel = path.relative_to(ROOT)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / rel)
    source = tmp_path / "src/arker/client/_async.py"
    source.write_text(source.read_text() + "\n\nasync def extra() -> None:\n    await thing()\n")
    stale = run_unasync(tmp_path, "--check")
    assert stale.returncode == 1 and "_sync.py" in stale.stderr
    assert run_unasync(tmp_path).returncode == 0
    generated = (tmp_path / "src/arker/client/_sync.py").read_text()
    assert "\ndef extra() -> None:\n    thing()\n" in generated
    assert run_unasync(tmp_path, "--check").returncode == 0


def test_sync_twin_carries_the_generated_header() -> None:
    text = (ROOT / "src/arker/client/_sync.py").read_text()
    assert text.startswith("# GENERATED from src/arker/client/_async.py by scripts/unasync.")
    assert "await " not in text and "async def" not in text and "AsyncArker" not in text
