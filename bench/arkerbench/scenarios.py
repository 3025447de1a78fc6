"""The sequential figures, each through the sync SDK: fork, create to first
command, run round trip, file transfer. VMs made for a series are deleted
after it (outside the timing), so deletion's background work in the kernel
does not land in the next sample."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arker import Arker, ArkerError, Computer
from arkerbench.floors import SnapshotFloor
from arkerbench.stats import Series, time_ms

__all__ = [
    "Fleet",
    "ForkSeries",
    "SideBySide",
    "Transfer",
    "create_to_first_command",
    "fork_series",
    "side_by_side",
    "run_round_trip",
    "transfer",
    "vm_with_data",
]

GOLDEN = "busybox"
BIG_FILE = "/home/user/big"
BENCH_FILE = "/home/user/bench.bin"
WRITE_TIMEOUT_S = 600.0


class Fleet:
    """Every VM the bench made, so that all are deleted through the API,
    whatever fails."""

    def __init__(self, arker: Arker, resources: dict[str, object] | None = None) -> None:
        self.arker = arker
        self.resources = resources  # what each fork asks for; None: the defaults
        self.live: dict[str, Computer] = {}

    def fork(
        self, source: str | Computer = GOLDEN, network: dict[str, object] | None = None
    ) -> Computer:
        handle = self.arker.vm(source) if isinstance(source, str) else source
        vm = handle.fork(network=network, resources=self.resources)
        self.live[vm.vm_id] = vm
        return vm

    def delete(self, vms: list[Computer] | None = None) -> None:
        for vm in list(self.live.values()) if vms is None else vms:
            self.live.pop(vm.vm_id, None)
            vm.delete()

    def delete_all_quietly(self) -> None:
        """Delete what is left after a failure, reporting (not raising) what
        could not be deleted, so the first error is the one people see."""
        for vm in list(self.live.values()):
            self.live.pop(vm.vm_id, None)
            try:
                vm.delete()
            except ArkerError as exc:
                print(f"could not delete {vm.vm_id}: {exc}", file=sys.stderr)


@dataclass(frozen=True)
class ForkSeries:
    api: Series  # POST /fork through the SDK
    ioctl: Series  # the bare snapshot ioctl of the same source, interleaved


def fork_series(
    fleet: Fleet, floor: SnapshotFloor, sources: list[Computer | None], n: int
) -> list[ForkSeries]:
    """Fork each source (None: the golden) n times. Every API fork is paired
    with a bare snapshot of the same subvolume, and the sources take turns,
    in an order that flips each round, so that all series see the same
    background (pool flusher, btrfs cleaner, other work on the machine)."""
    api: list[list[float]] = [[] for _ in sources]
    raw: list[list[float]] = [[] for _ in sources]
    children: list[Computer] = []
    takes: list[Callable[[], None]] = []
    for i, source in enumerate(sources):
        path = floor.golden(GOLDEN) if source is None else floor.vm(source.vm_id)
        handle = GOLDEN if source is None else source

        def take_api(i: int = i, handle: str | Computer = handle) -> None:
            api[i].append(time_ms(lambda: children.append(fleet.fork(handle))))

        def take_raw(i: int = i, path: Path = path) -> None:
            raw[i].append(floor.snapshot_ms(path))

        takes += [take_api, take_raw]
    for round_ in range(n):
        for take in takes if round_ % 2 else reversed(takes):
            take()
    fleet.delete(children)
    return [ForkSeries(Series(a), Series(r)) for a, r in zip(api, raw, strict=True)]


def vm_with_data(fleet: Fleet, size_bytes: int) -> Computer:
    """A running VM holding `size_bytes` of incompressible data, written by a
    run and committed by `sync` in the VM, as a user would leave it."""
    vm = fleet.fork()
    result = vm.run(
        f"head -c {size_bytes} /dev/urandom > {BIG_FILE} && sync", timeout_s=WRITE_TIMEOUT_S
    )
    if result.type != "completed" or result.exit_code != 0:
        raise RuntimeError(f"could not fill the big VM: {result}")
    return vm


def create_to_first_command(fleet: Fleet, n: int) -> Series:
    """Fork the golden and run `true` in the new VM (which starts it)."""
    made: list[Computer] = []

    def once() -> None:
        vm = fleet.fork()
        made.append(vm)
        _check_true(vm)

    series = Series([time_ms(once) for _ in range(n)])
    fleet.delete(made)
    return series


@dataclass(frozen=True)
class SideBySide:
    """The same work with a feature and without, sampled in turns. The quota:
    on two servers, one that gives every VM a disk quota (the default: a
    qgroup limit, and PID 1's supervisor answering statfs with the quota), one
    started with `--vm-disk-mib 0` (no limit, no supervisor; the pool keeps
    its simple-quota accounting, which a fork does not walk). The network: on
    the first server, a VM with egress (its default: a veth, an address, a
    route) and one forked with `network: {"egress": false}` (loopback only)."""

    fork_on: Series
    fork_off: Series
    create_on: Series  # fork + `true` in the new VM; quota and egress both on
    create_off: Series  # no quota
    create_no_egress: Series  # a quota, no egress


def side_by_side(on: Fleet, off: Fleet, n: int) -> SideBySide:
    """n rounds of a fork and a create on each server, and a create without
    egress on the first, in an order that flips each round, so that all see
    the same background."""
    samples: dict[str, list[float]] = {
        "fork_on": [],
        "fork_off": [],
        "create_on": [],
        "create_off": [],
        "create_no_egress": [],
    }
    made: list[tuple[Fleet, Computer]] = []

    def fork(name: str, fleet: Fleet) -> Callable[[], None]:
        def take() -> None:
            samples[name].append(time_ms(lambda: made.append((fleet, fleet.fork()))))

        return take

    def create(
        name: str, fleet: Fleet, network: dict[str, object] | None = None
    ) -> Callable[[], None]:
        def once() -> None:
            vm = fleet.fork(network=network)
            made.append((fleet, vm))
            _check_true(vm)

        return lambda: samples[name].append(time_ms(once))

    takes = [
        fork("fork_on", on),
        fork("fork_off", off),
        create("create_on", on),
        create("create_off", off),
        create("create_no_egress", on, {"egress": False}),
    ]
    for round_ in range(n):
        for take in takes if round_ % 2 else reversed(takes):
            take()
    for fleet, vm in made:
        fleet.delete([vm])
    return SideBySide(**{name: Series(v) for name, v in samples.items()})


def run_round_trip(vm: Computer, n: int) -> Series:
    """`true` in a VM that is already running."""
    _check_true(vm)  # starts it, outside the timing
    return Series([time_ms(lambda: _check_true(vm)) for _ in range(n)])


def _check_true(vm: Computer) -> None:
    result = vm.run("true")
    if result.type != "completed" or result.exit_code != 0:
        raise RuntimeError(f"`true` did not succeed in {vm.vm_id}: {result}")


@dataclass(frozen=True)
class Transfer:
    size_bytes: int
    write: Series
    read: Series

    @staticmethod
    def mb_per_s(size_bytes: int, series: Series) -> float:
        """Decimal megabytes per second at the median time."""
        return size_bytes / 1e6 / (series.median_ms / 1000)


def transfer(vm: Computer, size_bytes: int, n: int) -> Transfer:
    """Write then read back a file of `size_bytes` random bytes, n times each;
    every read is checked against what was written."""
    data = os.urandom(size_bytes)
    writes: list[float] = []
    reads: list[float] = []
    for _ in range(n):
        writes.append(time_ms(lambda: vm.sync.write_file(BENCH_FILE, data)))
        start = time.perf_counter()
        back = vm.sync.read_file(BENCH_FILE)
        reads.append((time.perf_counter() - start) * 1000)
        if back != data:
            raise RuntimeError("the file read back differs from the one written")
    vm.run(f"rm -f {BENCH_FILE}")
    return Transfer(size_bytes, Series(writes), Series(reads))


@dataclass(frozen=True)
class StreamLatency:
    echo: Series  # stdin sent -> its echo's event received
    post: Series  # the stdin POST alone (its answer: the bytes are in the pipe)


def stream_latency(vm: Computer, n: int) -> StreamLatency:
    """A line written to a run's stdin, echoed by the shell, received as an
    event on the run's stream. The echo is an upper bound of the time from a
    byte written in the VM to its event on this client (it holds a whole
    POST too); the POST alone is the floor it is reported against. The VM
    has no clock finer than 10 ms to stamp its bytes with."""
    handle = vm.run('while read line; do echo "$line"; done', background=True, stdin_open=True)
    echo: list[float] = []
    post: list[float] = []
    events = handle.events()
    try:
        for i in range(n + 1):
            start = time.perf_counter()
            handle.send_stdin(f"{i}\n")
            posted = time.perf_counter()
            event = next(events)
            while event.type != "stdout":
                event = next(events)
            if event.data != f"{i}\n".encode():
                raise RuntimeError(f"echo {i} came back as {event.data!r}")
            if i:  # the first one starts the stream
                echo.append((time.perf_counter() - start) * 1000)
                post.append((posted - start) * 1000)
    finally:
        del events  # the generator goes, and closes its HTTP stream
        handle.cancel()
    return StreamLatency(Series(echo), Series(post))
