"""The small interface every engine kind implements.

The service layer talks only to `Engine`. The namespace engine (`host.py`) is
the first kind; a microVM engine could stand behind the same methods. Every
method is synchronous and may block (the server calls them from worker
threads); every failure is an `ArkerError` with the contract's code.

Ids are minted by the caller (the service); the engine only keeps them.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, Literal

if TYPE_CHECKING:
    import socket

    from arker.engine.pty import Pty

from arker.errors import ArkerError, ErrorCode

__all__ = [
    "DEFAULT_OUTPUT_CAP_BYTES",
    "ArchiveReader",
    "DirListing",
    "Engine",
    "FileInfo",
    "Fd",
    "FileWriter",
    "FsEntry",
    "GoldenInfo",
    "HostPath",
    "Limits",
    "NetworkPolicy",
    "OutputChunk",
    "Progress",
    "RunInfo",
    "RunPhase",
    "RunMoved",
    "RunSpec",
    "Unpacked",
    "VmPower",
    "port_closed",
]

DEFAULT_OUTPUT_CAP_BYTES = 8 * 1024 * 1024

# Marks for the kinds of value that are not plain data, so a remote engine
# (cluster/remote.py) knows how each crosses the wire from the type alone: a
# path on the engine's own machine (its file is sent), and a file descriptor
# of this process (it cannot cross at all).
HostPath = Annotated[str, "a path on the engine's machine"]
Fd = Annotated[int, "a file descriptor of this process"]

# Called with (bytes_or_steps_done, total_or_None, message) while goldens build.
Progress = Callable[[int, int | None, str], None]


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 1024 * 1024 * 1024
    pids_max: int = 512
    cpu_cores: float = 1.0
    disk_bytes: int | None = None  # what the VM may write of its own; None: no limit


@dataclass(frozen=True)
class NetworkPolicy:
    """What a VM may reach. `egress` False: nothing (loopback only). `allow`
    None: the internet, never the host, other VMs or private ranges; a tuple:
    only those domain names (`example.com`, `*.example.org`) and IPv4 CIDRs."""

    egress: bool = False
    allow: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """As stored (the engine's state, the server's row) and as the wire has it."""
        return {"egress": self.egress, "allow": None if self.allow is None else list(self.allow)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any] | None) -> NetworkPolicy:
        """What `as_dict` made; None (a VM made before networking): loopback only."""
        if not saved:
            return cls()
        allow = saved.get("allow")
        return cls(bool(saved.get("egress")), None if allow is None else tuple(allow))


@dataclass(frozen=True)
class GoldenInfo:
    name: str
    description: str | None
    created_at: float  # unix seconds


@dataclass(frozen=True)
class RunSpec:
    command: str  # run by /bin/sh -c inside the VM
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/home/user"
    stdin: bytes = b""
    stdin_open: bool = False  # a pipe the engine writes more on (write_stdin)
    user: Literal["user", "root"] = "user"
    timeout_s: float | None = None
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES


class RunPhase(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    FAILED = "failed"  # the engine lost the run (e.g. restarted under it)


@dataclass(frozen=True)
class RunInfo:
    phase: RunPhase
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    oom_killed: bool
    started_at: float  # unix seconds
    finished_at: float | None
    failure_reason: str | None = None
    # (code, message) pairs, e.g. ("pids_exhausted", "..."): the run ended
    # but left the VM unable to start another.
    warnings: tuple[tuple[str, str], ...] = ()
    # What each stream carried in all. When that is more than what is kept,
    # stdout holds its head and its tail, len(stdout) // 2 bytes of head first.
    stdout_bytes: int = 0
    stderr_bytes: int = 0

    @property
    def done(self) -> bool:
        return self.phase is not RunPhase.RUNNING

    @property
    def duration_ms(self) -> int:
        import time

        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0, int((end - self.started_at) * 1000))


@dataclass(frozen=True)
class OutputChunk:
    """Bytes of one stream from `start` on; `start` is past the offset asked
    for when the bytes there were dropped (the middle of a long stream)."""

    start: int
    data: bytes
    total: int  # bytes the stream has carried so far

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    sha256: str


class FileWriter(abc.ABC):
    """A file written in pieces: write() any number of times, then commit()
    (atomic, with write_file's rules) or abort(). A failed call aborts."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> FileInfo: ...

    @abc.abstractmethod
    def abort(self) -> None:
        """Throw away what was written; safe to call more than once."""


@dataclass(frozen=True)
class FsEntry:
    """One file as lstat sees it (a symlink is itself, with its target)."""

    name: str  # relative to the listed directory; for stat, the last component
    path: str  # absolute, as the VM sees it
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int  # permission bits with setuid, setgid and sticky
    mtime: float  # unix seconds
    link_target: str | None = None


@dataclass(frozen=True)
class DirListing:
    entries: list[FsEntry]
    next_offset: int | None  # None: the last page
    truncated: bool  # the walk stopped at its bound on names read


@dataclass(frozen=True)
class Unpacked:
    path: str
    entries: int
    bytes: int


class ArchiveReader(abc.ABC):
    """A directory packed as a tar stream, read piece by piece: read() until
    it returns b"", then close() (also safe early, and more than once)."""

    @abc.abstractmethod
    def read(self) -> bytes: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class _GatheringWriter(FileWriter):
    """For engines that cannot stream: the pieces, then one write_file."""

    def __init__(self, engine: Engine, vm_id: str, path: str, max_bytes: int) -> None:
        self._engine, self._vm_id, self._path, self._max_bytes = engine, vm_id, path, max_bytes
        self._pieces: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_bytes:
            self.abort()
            raise ArkerError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"{self._path} is larger than {self._max_bytes} bytes"
            )
        self._pieces.append(data)

    def commit(self) -> FileInfo:
        data = b"".join(self._pieces)
        self.abort()
        return self._engine.write_file(self._vm_id, self._path, data)

    def abort(self) -> None:
        self._pieces.clear()


class RunMoved(ArkerError):
    """Waiting for a run ended because its VM moved to another machine (a
    cluster's takeover): this attempt is over, and another one is started
    from the VM's checkpoint by whoever took it over."""

    def __init__(self, vm_id: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, f"vm {vm_id!r} moved to another host", 503)


class VmPower(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class Engine(abc.ABC):
    """One host's machinery: storage, isolation, runs, files."""

    kind: str = "abstract"
    supports_checkpoints: bool = False

    # -- lifecycle of the engine itself
    @abc.abstractmethod
    def open(self) -> None:
        """Find or create storage, then reconcile what is on disk after a crash:
        no orphan mounts, cgroups or processes; every stored VM usable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every VM (killing its processes) and release mounts."""

    # -- goldens
    @abc.abstractmethod
    def goldens(self) -> list[GoldenInfo]: ...

    @abc.abstractmethod
    def build_golden(self, name: str, progress: Progress | None = None) -> GoldenInfo:
        """Build a known golden (`busybox`, `debian`) if it is not there yet."""

    @abc.abstractmethod
    def import_golden(
        self,
        name: str,
        tarball: HostPath,
        progress: Progress | None = None,
        *,
        description: str | None = None,
        require_shell: bool = False,
    ) -> GoldenInfo:
        """Import a rootfs tarball (.tar, .tar.gz, .tar.zst) under `name`.
        With `require_shell`, a tree with no executable /bin/sh is
        invalid_request, and nothing is kept."""

    def publish_golden(self, vm_id: str, name: str, description: str | None = None) -> GoldenInfo:
        """Publish the VM's files as they are now as the golden `name`, in
        constant time (a read-only snapshot); conflict if the name is taken.
        The VM keeps running, and its later writes stay its own."""
        raise _unsupported("publishing of goldens")

    def delete_golden(self, name: str) -> None:
        """Delete the golden; VMs forked from it keep their files. A golden
        that is not there is not an error."""
        raise _unsupported("deleting of goldens")

    # -- VMs
    @abc.abstractmethod
    def fork(
        self,
        source: str,
        vm_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> None:
        """Make `vm_id` a copy-on-write copy of `source` (a golden name or a VM
        id), in constant time. The new VM is stopped; it starts on first run.
        `network` None: no egress."""

    def set_network(self, vm_id: str, network: NetworkPolicy) -> None:
        """Change the VM's network policy, live if it runs: new connections
        follow it, established ones may finish."""
        raise ArkerError(
            ErrorCode.UNSUPPORTED_OPERATION, f"the {self.kind} engine has no network for vms"
        )

    def check_storage(self) -> None:
        """Raise ArkerError(insufficient_storage) if the host's storage is
        below its reserve; cheap enough for every fork and run. Default: no
        reserve."""
        return None

    def disk_usage(self, vm_id: str) -> tuple[int, str] | None:
        """(limit in bytes, a file holding the bytes the VM has written) for a
        VM with a disk quota, else None."""
        return None

    def storage_delete_pending(self) -> int:
        """How many deletes could not finish yet and wait to be retried."""
        return 0

    @abc.abstractmethod
    def delete(self, vm_id: str) -> None:
        """Kill the VM's processes and free its storage, cgroup and mounts.
        Deleting a VM that is not there is not an error."""

    @abc.abstractmethod
    def vm_ids(self) -> list[str]: ...

    @abc.abstractmethod
    def power(self, vm_id: str) -> VmPower: ...

    @abc.abstractmethod
    def stop(self, vm_id: str) -> None:
        """Kill every process of the VM; its files stay."""

    def restart(self, vm_id: str) -> None:
        """Kill every process of the VM (runs in flight fail) and start its
        PID 1 again; its files stay. By default a stop: an engine that starts
        VMs on their next run need do no more."""
        self.stop(vm_id)

    # -- runs
    @abc.abstractmethod
    def start_run(self, vm_id: str, run_id: str, spec: RunSpec) -> None:
        """Start a command (starting the VM if it is stopped) and return at once.
        Output is kept until forget_run, capped at spec.output_cap_bytes a stream."""

    @abc.abstractmethod
    def wait_run(self, vm_id: str, run_id: str, timeout_s: float | None = None) -> RunInfo:
        """Block until the run ends or `timeout_s` passes; return its state."""

    @abc.abstractmethod
    def run_info(self, vm_id: str, run_id: str) -> RunInfo:
        """The run's state and output so far, without blocking."""

    @abc.abstractmethod
    def cancel_run(self, vm_id: str, run_id: str) -> RunInfo:
        """Kill the run's whole process tree; a finished run is returned as is."""

    @abc.abstractmethod
    def forget_run(self, vm_id: str, run_id: str) -> None:
        """Drop the run's output once the caller has stored the result."""

    # Live runs. Engines that cannot follow a run as it goes keep the
    # defaults: callers fall back to run_info and its whole output.
    def read_output(
        self, vm_id: str, run_id: str, stream: str, offset: int, limit: int
    ) -> OutputChunk:
        """Up to `limit` kept bytes of `stream` ("stdout" or "stderr") from
        byte `offset` on, without blocking (cheap enough for the event loop)."""
        raise _unsupported("reading a run's output as it goes")

    def output_wakers(self, vm_id: str, run_id: str) -> tuple[Fd, ...]:
        """fds that turn readable when the run may have new output (each
        drained by `read_output`); () when there are none to watch. They are
        the caller's to close: copies that stay valid after the run is
        forgotten, so a watcher never holds a number reused for another file."""
        return ()

    def write_stdin(self, vm_id: str, run_id: str, data: bytes, timeout_s: float) -> int:
        """Append to the stdin of a run started with `stdin_open`, waiting up to
        `timeout_s` for the command to read it; the bytes that went in."""
        raise _unsupported("writing to a run's stdin")

    def close_stdin(self, vm_id: str, run_id: str) -> None:
        """Close an open stdin: the command reads end-of-file."""
        raise _unsupported("writing to a run's stdin")

    def signal_run(self, vm_id: str, run_id: str, signum: int) -> None:
        """Send a signal to the run's process group; conflict if it has ended."""
        raise _unsupported("signals")

    # -- files (paths as the VM sees them; symlinks resolve inside its root)
    @abc.abstractmethod
    def read_file(self, vm_id: str, path: str, max_bytes: int) -> bytes: ...

    @abc.abstractmethod
    def write_file(self, vm_id: str, path: str, data: bytes) -> FileInfo:
        """Atomic (temp file, then rename), owned by uid 1000."""

    def open_file_writer(self, vm_id: str, path: str, max_bytes: int) -> FileWriter:
        """write_file in pieces, so a large upload goes to disk as it arrives
        instead of whole into memory first. By default the pieces are gathered
        and written at commit; engines that can, stream."""
        return _GatheringWriter(self, vm_id, path, max_bytes)

    # Directories. Engines without them keep these defaults.
    def list_dir(
        self, vm_id: str, path: str, *, depth: int = 1, limit: int = 200, offset: int = 0
    ) -> DirListing:
        """One page of the directory's entries, `depth` levels down, sorted by
        name within each directory; never through symlinks. Not a directory:
        conflict."""
        raise _unsupported("directory listings")

    def stat_path(self, vm_id: str, path: str) -> FsEntry:
        raise _unsupported("stat")

    def make_dir(self, vm_id: str, path: str, *, parents: bool = False) -> FsEntry:
        """mkdir (uid 1000, 0755); with `parents`, as mkdir -p."""
        raise _unsupported("mkdir")

    def move_path(
        self, vm_id: str, source: str, destination: str, *, overwrite: bool = False
    ) -> FsEntry:
        """rename(2) within the VM; anything at `destination` is conflict
        unless `overwrite`."""
        raise _unsupported("move")

    def remove_path(self, vm_id: str, path: str, *, recursive: bool = False) -> None:
        """Remove a file or symlink; a directory only with `recursive`."""
        raise _unsupported("remove")

    def open_archive(self, vm_id: str, path: str) -> ArchiveReader:
        """The directory as a tar stream; errors (not found, not a
        directory) are raised here, before any byte."""
        raise _unsupported("archives")

    def unpack_archive(self, vm_id: str, path: str, tarball: HostPath, max_bytes: int) -> Unpacked:
        """Unpack the tar file `tarball` (a host path: plain, gzip or zstd)
        into the directory `path`, all or nothing: any member that could
        escape it, or is special, is invalid_request with nothing written."""
        raise _unsupported("archives")

    # -- ports
    def connect_port(self, vm_id: str, port: int) -> socket.socket:
        """A TCP connection to 127.0.0.1:`port` inside the VM (which reaches a
        server bound to 127.0.0.1 or 0.0.0.0 there), starting the VM if it is
        stopped. Nothing listening: ArkerError(unavailable), at once."""
        raise _unsupported("ports")

    # -- terminals
    def open_pty(
        self,
        vm_id: str,
        *,
        user: Literal["user", "root"] = "user",
        cols: int = 80,
        rows: int = 24,
        command: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Pty:
        """A login shell of `user` (or `command`, by /bin/sh -c) on a terminal
        of `cols` x `rows` in the VM, starting the VM if it is stopped. It is
        contained as a run is (the VM's cgroups, no privileges, seccomp) and
        dies with the VM; `Pty.close` kills all it started."""
        raise _unsupported("terminals")

    # -- checkpoints (durable VMs); engines without them raise unsupported_operation
    def checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        raise _unsupported("checkpoints")

    def restore(self, vm_id: str, checkpoint_id: str) -> None:
        """Stop the VM and put its files back as they were at the checkpoint."""
        raise _unsupported("checkpoints")

    def delete_checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        raise _unsupported("checkpoints")

    def checkpoints(self, vm_id: str) -> list[str]:
        raise _unsupported("checkpoints")

    # -- shipping: a cluster moves checkpoints and goldens between hosts as
    # zstd-compressed `btrfs send` streams; engines without it raise unsupported_operation
    def send_checkpoint(
        self, vm_id: str, checkpoint_id: str, parent_id: str | None, out: BinaryIO
    ) -> None:
        """Write the checkpoint to `out` as a compressed stream: whole, or only
        what changed since the checkpoint `parent_id` (which the receiver has)."""
        raise _unsupported("checkpoint shipping")

    def receive_checkpoint(
        self, vm_id: str, checkpoint_id: str, parent_id: str | None, src: BinaryIO
    ) -> None:
        """Keep the checkpoint that `src` streams (what `send_checkpoint` wrote
        on another host); an incremental needs `parent_id` received first."""
        raise _unsupported("checkpoint shipping")

    def restore_received(
        self,
        vm_id: str,
        checkpoint_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> None:
        """Make the VM `vm_id` on this engine, stopped, with the files of its
        received checkpoint (conflict if the VM is here already)."""
        raise _unsupported("checkpoint shipping")

    def send_golden(self, name: str, out: BinaryIO) -> None:
        """Write the golden to `out` as a compressed stream."""
        raise _unsupported("golden shipping")

    def receive_golden(self, name: str, src: BinaryIO) -> None:
        """Keep the golden that `src` streams as `name` (conflict if it is here)."""
        raise _unsupported("golden shipping")


# A closed port is the VM's app not serving, not this server failing: 502, as a
# gateway answers, with the code `unavailable` (the contract lists both).
PORT_CLOSED_STATUS = 502


def port_closed(vm_id: str, port: int) -> Exception:
    """The one error of every engine for a port nothing listens on."""
    from arker.errors import ArkerError, ErrorCode

    return ArkerError(
        ErrorCode.UNAVAILABLE,
        f"nothing listens on port {port} in vm {vm_id}",
        status=PORT_CLOSED_STATUS,
    )


def _unsupported(what: str) -> Exception:
    from arker.errors import ArkerError, ErrorCode

    return ArkerError(ErrorCode.UNSUPPORTED_OPERATION, f"this engine has no {what}")
