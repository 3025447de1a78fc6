"""The server's own share of a foreground run (not a test): `arker serve`'s app
on uvicorn, as served, over the route tests' FakeEngine on a fresh SQLite
database (or a fresh one made on the PostgreSQL server at `--postgres`), timed
through HTTP as the SDK calls it (a kept-alive httpx.Client, an
Idempotency-Key per run), against GET /healthz on the same client; and a fork
of the golden (the forks are deleted after each round, outside the timing).

    .venv/bin/python bench/bench_server_run.py [-n 2000] [--engine fake|instant]
        [--profile OUT.html] [--postgres URL]

`instant` finishes every run inside start_run (no thread of its own), so what
is left is the server's cost alone. `--profile` samples the server process
with pyinstrument for the whole series and writes its HTML there (and
its text beside it, with `.txt` added).
Prints one `name: median ms, p90 ms` line per series.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "server"))  # the FakeEngine


def _engine(kind: str) -> object:
    from fake_engine import FakeEngine, FakeRun

    from arker.engine.base import RunPhase, RunSpec

    class InstantEngine(FakeEngine):
        """Every run is over when start_run returns: `true`, at no cost."""

        def start_run(self, vm_id: str, run_id: str, spec: RunSpec) -> None:
            vm = self._vm(vm_id)
            now = time.time()
            run = FakeRun(spec=spec, started_at=now, phase=RunPhase.COMPLETED, exit_code=0)
            run.finished_at = now
            run.done.set()
            vm.runs[run_id] = run

    return InstantEngine() if kind == "instant" else FakeEngine()


def serve(data_dir: str, database_url: str | None, port: int, kind: str, profile: str) -> None:
    """The child: `arker serve` over a fake engine until SIGTERM."""
    from arker.server.config import Settings
    from arker.server.main import serve as arker_serve

    settings = Settings(data_dir=data_dir, database_url=database_url)
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002, async_mode="disabled")
        # uvicorn raises the signal again once it has stopped: let it pass, so
        # the profile is written.
        signal.signal(signal.SIGTERM, lambda *_: None)
        profiler.start()
    try:
        arker_serve(settings, port=port, engine=_engine(kind))  # type: ignore[arg-type]
    finally:
        if profiler is not None:
            profiler.stop()
            Path(profile).write_text(profiler.output_html())
            Path(profile + ".txt").write_text(profiler.output_text(unicode=False))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _make_key(data_dir: str, database_url: str | None) -> str:
    from arker.server.auth import create_key
    from arker.server.config import Settings
    from arker.server.store import Database

    db = Database(Settings(data_dir=data_dir, database_url=database_url).db_url)
    try:
        await db.migrate()
        return (await create_key(db, "bench"))[1]
    finally:
        await db.close()


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[round(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered) * 1000:.3f} ms, p90 {p90 * 1000:.3f} ms"


def measure(base_url: str, key: str, n: int, rounds: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        vm = http.post("/v1/vms/busybox/fork", json={}).raise_for_status().json()["vm_id"]
        runs_url = f"/v1/vms/{vm}/runs"

        def run_true() -> None:
            r = http.post(
                runs_url, json={"command": "true"}, headers={"Idempotency-Key": str(uuid.uuid4())}
            )
            body = r.json()
            if r.status_code != 200 or body["type"] != "completed" or body["exit_code"] != 0:
                raise RuntimeError(f"`true` failed: {r.status_code} {body}")

        for _ in range(200):  # warm up: imports, caches, the connection
            http.get("/healthz").raise_for_status()
            run_true()
        forked: list[str] = []

        def fork() -> None:
            r = http.post("/v1/vms/busybox/fork", json={})
            if r.status_code != 201:
                raise RuntimeError(f"fork failed: {r.status_code} {r.text}")
            forked.append(r.json()["vm_id"])

        health: list[float] = []
        runs: list[float] = []
        forks: list[float] = []
        for _ in range(rounds):  # interleaved, so drift hits every series alike
            for series, call in (
                (health, lambda: http.get("/healthz").raise_for_status()),
                (runs, run_true),
                (forks, fork),
            ):
                for _ in range(n // rounds):
                    t = time.perf_counter()
                    call()
                    series.append(time.perf_counter() - t)
            for vm_id in forked:  # outside the timing
                http.delete(f"/v1/vms/{vm_id}").raise_for_status()
            forked.clear()
    print(f"GET /healthz: {_ms(health)}")
    print(f"POST runs `true`: {_ms(runs)}")
    print(f"POST fork: {_ms(forks)}")
    for name, series in (("run", runs), ("fork", forks)):
        extra = statistics.median(series) - statistics.median(health)
        print(f"{name} minus healthz (medians): {extra * 1000:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per series")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engine", choices=("fake", "instant"), default="fake")
    parser.add_argument("--postgres", help="a PostgreSQL URL (asyncpg) instead of SQLite")
    parser.add_argument("--database-url", help=argparse.SUPPRESS)  # the child's
    parser.add_argument("--profile", default="", help="write a pyinstrument HTML here")
    parser.add_argument("--serve", nargs=2, metavar=("DATA_DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.database_url, int(args.serve[1]), args.engine, args.profile)
        return
    data_dir = tempfile.mkdtemp(prefix="arker-bench-server-")
    pg_name = None
    if args.postgres:
        from pg import create_database_sync

        args.database_url, pg_name = create_database_sync(args.postgres)
    try:
        key = asyncio.run(_make_key(data_dir, args.database_url))
        port = _free_port()
        cmd = [sys.executable, __file__, "--serve", data_dir, str(port), "--engine", args.engine]
        if args.database_url:
            cmd += ["--database-url", args.database_url]
        if args.profile:
            cmd += ["--profile", os.path.abspath(args.profile)]
        with Path(data_dir, "server.log").open("wb") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            base_url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    httpx.get(f"{base_url}/healthz", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None:
                        tail = Path(data_dir, "server.log").read_text(errors="replace")[-4000:]
                        raise RuntimeError(f"the server died:\n{tail}") from None
                    time.sleep(0.05)
            measure(base_url, key, args.n, args.rounds)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            if args.profile:
                print(f"profile: {args.profile} (and .txt)")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        if pg_name:
            from pg import drop_database_sync

            drop_database_sync(args.postgres, pg_name)


if __name__ == "__main__":
    main()
