"""scripts/bench: is Arker the fastest way to get a forked Linux machine?

Starts its own `arker serve` (fresh data directory, busybox golden built
through the CLI, a new key, a free port), measures through the SDK, prints a
table and writes bench.json and bench.png into --out. Needs root.

Measured, each next to its floor from the same run:
  fork        POST /fork of the golden, of an empty running VM and of a
              running VM holding 1 GB (written by a run, then `sync`);
              floor: the engine's own snapshot ioctl on the same subvolume
  create      fork + run `true` in the new VM, one after another; and N at
              once (async SDK): each one's latency and the wall time
  run         `true` in a running VM; floor: HTTP GET /healthz on the same
              kept-alive client + a bare subprocess.run(["true"])
  files       write then read back 100 MiB of random bytes (MB = 10^6 bytes)
  memory      200 VMs started (fork + `true`) and left idle: the sum of their
              memory cgroups and the fall of host MemAvailable, per VM
  quota       fork and create on this server (every VM has a disk quota) and
              on a second one started with --vm-disk-mib 0, in turns: the
              cost of a quota is the ratio of the medians
  network     create with egress (the default) and with {"egress": false}
              on this server, in the same turns: the cost of a VM's network
  stream      a line sent to a run's stdin, echoed by the shell, received
              as an event of its SSE stream: an upper bound of byte-in-VM to
              event-on-client; floor: the stdin POST alone
  userns      fork and create on this server and on a third one started with
              --userns off, in turns: the cost of user namespaces
  sizes       fork and create of VMs sized on request (SIZED: their own CPU
              quota and cpuset, memory and pids limits) and of unsized ones
              on this server, in turns: the cost of asking for a size
  deletes     N networked VMs deleted at once while another VM runs `true`
              again and again: that call's latency, over the same with
              nothing going on (deleting VMs must not block other calls)

Goals are reported (PASS/MISS), never asserted. Everything the bench made is
removed: VMs through the API, the server by SIGTERM, then its data directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from arker import Arker
from arkerbench import crowd, floors, scenarios
from arkerbench.goals import judge
from arkerbench.report import table, write_json, write_png
from arkerbench.results import Results
from arkerbench.server import LocalServer, local_server

MB = 1000 * 1000
MIB = 1024 * 1024
SETTLE_S = 2.0  # after writing the big VM, for the pool flusher's next pass
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out"


@dataclass(frozen=True)
class Plan:
    forks: int  # samples per fork series
    creates: int  # sequential creates to first command
    burst: int  # creates sent at once
    runs: int  # run round trips
    floors: int  # samples of each process and HTTP floor
    transfers: int  # writes and reads of the file
    file_bytes: int
    big_bytes: int  # data held by the VM that is forked
    idle_vms: int
    quota_rounds: int  # forks and creates on each of the two servers
    deleted_vms: int  # networked VMs deleted at once


FULL = Plan(30, 30, 100, 200, 200, 5, 100 * MIB, 1000 * MB, 200, 30, 1000)
QUICK = Plan(5, 5, 10, 20, 20, 2, 10 * MIB, 100 * MB, 10, 5, 20)
NO_QUOTA = ("--vm-disk-mib", "0")
NO_USERNS = ("--userns", "off")
# 1000 idle VMs of 1 GiB limits each are 42 times this machine's memory (they
# use ~2.5 MiB each): admission must let the delete crowd start.
CROWD = ("--overcommit", "64")
SIZED = {"cpu": 0.5, "memory_mib": 512, "pids": 256}


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(server: LocalServer, bare: LocalServer, plain: LocalServer, plan: Plan) -> Results:
    """Every figure, in an order where each leaves the machine as it found it.
    `bare` is the same server without disk quotas, for their cost; `plain`
    the same without user namespaces, for theirs."""
    http = httpx.Client()
    arker = Arker(server.api_key, base_url=server.base_url, retry=False, http_client=http)
    fleet = scenarios.Fleet(arker)
    bare_fleet = scenarios.Fleet(
        Arker(bare.api_key, base_url=bare.base_url, retry=False, http_client=http)
    )
    plain_fleet = scenarios.Fleet(
        Arker(plain.api_key, base_url=plain.base_url, retry=False, http_client=http)
    )
    sized_fleet = scenarios.Fleet(arker, resources=SIZED)
    try:
        with floors.SnapshotFloor(server.data_dir) as snap:
            _say("floors: subprocess and HTTP")
            true_floor = floors.subprocess_floor(plan.floors)
            http_floor = floors.http_floor(http, server.base_url, plan.floors)
            _say(f"fork: the golden, an empty VM and one holding {plan.big_bytes / MB:,.0f} MB")
            empty = fleet.fork()
            empty.run("true")
            big = scenarios.vm_with_data(fleet, plan.big_bytes)
            time.sleep(SETTLE_S)
            fork_golden, fork_empty, fork_big = scenarios.fork_series(
                fleet, snap, [None, empty, big], plan.forks
            )
            fleet.delete()
        _say("run round trip, file transfer")
        vm = fleet.fork()
        run = scenarios.run_round_trip(vm, plan.runs)
        _say("stream latency: a line to a run's stdin, its echo as an event")
        stream = scenarios.stream_latency(vm, plan.runs)
        transfer = scenarios.transfer(vm, plan.file_bytes, plan.transfers)
        fleet.delete()
        _say("create to first command, sequential")
        create = scenarios.create_to_first_command(fleet, plan.creates)
        _say(f"{plan.burst} creates at once")
        burst = crowd.burst(server.base_url, server.api_key, plan.burst)
        _say(f"idle memory of {plan.idle_vms} running VMs")
        memory = crowd.idle_memory(server.base_url, server.api_key, server.data_dir, plan.idle_vms)
        _say(f"quota and network cost: {plan.quota_rounds} rounds, with and without each")
        side = scenarios.side_by_side(fleet, bare_fleet, plan.quota_rounds)
        _say(f"user namespace cost: {plan.quota_rounds} rounds, with and without")
        userns = scenarios.side_by_side(fleet, plain_fleet, plan.quota_rounds)
        _say(f"sized VM cost: {plan.quota_rounds} rounds, sized {SIZED} and unsized")
        sizes = scenarios.side_by_side(sized_fleet, fleet, plan.quota_rounds)
        _say(f"{plan.deleted_vms} networked VMs deleted while another VM runs `true`")
        deletes = crowd.delete_crowd(server.base_url, server.api_key, plan.deleted_vms)
    finally:
        fleet.delete_all_quietly()
        bare_fleet.delete_all_quietly()
        plain_fleet.delete_all_quietly()
        sized_fleet.delete_all_quietly()
        http.close()
    return Results(
        fork_golden=fork_golden,
        fork_empty=fork_empty,
        fork_big=fork_big,
        big_bytes=plan.big_bytes,
        create=create,
        burst=burst,
        run=run,
        transfer=transfer,
        memory=memory,
        true_floor=true_floor,
        http_floor=http_floor,
        side=side,
        userns=userns,
        sizes=sizes,
        deletes=deletes,
        stream=stream,
    )


def _commit() -> str | None:
    """The checkout's commit, so a result can be traced to the code it measured."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.decode().strip()


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a few iterations, 10 VMs instead of 200, 10 MiB files, a 100 MB VM, "
        "10 at once, 20 deletes instead of 1000 (CI runs this)",
    )
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where outputs go (default {DEFAULT_OUT})"
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="make the server's fresh data directory inside this one (default: the "
        "system temp dir); on btrfs the pool uses it directly instead of a loop image",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root: the engine makes namespaces, cgroups and btrfs subvolumes")
    plan = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    load_at_start = list(os.getloadavg())
    _say(f"starting arker serve ({'quick' if args.quick else 'full'} run)")
    with (
        local_server(args.out / "server.log", args.data_dir, CROWD) as server,
        local_server(args.out / "server-no-quota.log", args.data_dir, NO_QUOTA) as bare,
        local_server(args.out / "server-no-userns.log", args.data_dir, NO_USERNS) as plain,
    ):
        results = measure(server, bare, plain, plan)
    cpus = os.cpu_count() or 1
    goals = judge(results.figures(), plan.burst, cpus)
    load_at_end = list(os.getloadavg())
    meta = {
        "mode": "quick" if args.quick else "full",
        "commit": _commit(),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": cpus,
            "kernel": platform.release(),
            "python": platform.python_version(),
            # Other work on the machine skews every figure: keep it on record.
            "load_average_at_start": load_at_start,
            "load_average_at_end": load_at_end,
        },
        "plan": asdict(plan),
    }
    write_json(args.out / "bench.json", results, goals, meta)
    title = f"Arker, {meta['mode']} run, {started:%Y-%m-%d %H:%M} UTC, {cpus} cores"
    write_png(args.out / "bench.png", results, goals, title)
    print(table(results, goals))
    print(f"\nload average {load_at_start[0]:.2f} at start, {load_at_end[0]:.2f} at end (1 min)")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
