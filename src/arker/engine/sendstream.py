"""Read-only subvolumes as zstd-compressed `btrfs send` streams, and back.

    send(subvol, parent, out)      btrfs send [-p parent] subvol | zstd -1   -> out
    receive(dest_dir, src, created) src -> zstd -d | btrfs receive -C dest_dir

btrfs-progs and the zstd binary do the work, in a pipe between them that never
passes through Python; Python only copies the compressed bytes to or from the
caller's file object. A receive runs chrooted into its destination (`-C`), so a
stream can create nothing outside it, and it stops at the stream's end marker
(`-e`): a truncated stream fails instead of leaving a half tree that looks whole
(btrfs receive sets the subvolume read-only only once it is complete).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Protocol

from arker.errors import ArkerError, ErrorCode

__all__ = ["CHUNK_BYTES", "Sink", "Source", "receive", "send"]

CHUNK_BYTES = 1024 * 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Source(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def send(subvol: Path, parent: Path | None, out: Sink, *, level: int = 1) -> int:
    """Write `subvol` (incremental against `parent` if given) to `out`,
    compressed; return the compressed bytes written."""
    argv = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(subvol)]
    with tempfile.TemporaryFile() as err:
        sender = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
        )
        assert sender.stdout is not None
        packer = subprocess.Popen(
            ["zstd", f"-{level}", "-q", "-c"], stdin=sender.stdout, stdout=subprocess.PIPE,
            stderr=err,
        )  # fmt: skip
        sender.stdout.close()  # the packer holds it now; send sees EPIPE if it dies
        assert packer.stdout is not None
        total = 0
        try:
            while chunk := packer.stdout.read(CHUNK_BYTES):
                out.write(chunk)
                total += len(chunk)
        except BaseException:
            _kill(sender, packer)
            raise
        finally:
            packer.stdout.close()
        codes = (sender.wait(), packer.wait())
        if any(codes):
            raise ArkerError(
                ErrorCode.INTERNAL, f"btrfs send of {subvol.name} failed: {_text(err)}"
            )
    return total


def receive(dest_dir: Path, src: Source, created: list[str]) -> int:
    """Receive the compressed stream `src` yields into `dest_dir`; return the
    compressed bytes read. The names of the subvolumes it began are appended to
    `created`, failed or not. `invalid_request` if it is not a whole stream."""
    with tempfile.TemporaryFile() as err:
        unpacker = subprocess.Popen(
            ["zstd", "-d", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )
        assert unpacker.stdin is not None and unpacker.stdout is not None
        receiver = subprocess.Popen(
            ["btrfs", "receive", "-e", "-C", str(dest_dir)],
            stdin=unpacker.stdout, stdout=err, stderr=err,
        )  # fmt: skip
        unpacker.stdout.close()
        total = 0
        try:
            while chunk := src.read(CHUNK_BYTES):
                total += len(chunk)
                try:
                    unpacker.stdin.write(chunk)
                except BrokenPipeError:
                    break  # a side died: its exit status says why
        except BaseException:
            _kill(receiver, unpacker)
            created.extend(m.group(1) for m in _AT.finditer(_text(err)))
            raise
        finally:
            with contextlib.suppress(BrokenPipeError):
                unpacker.stdin.close()
        codes = (unpacker.wait(), receiver.wait())
        text = _text(err)
        created.extend(m.group(1) for m in _AT.finditer(text))
        if any(codes):
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"not a whole subvolume stream: {text}")
    return total


# What btrfs receive says as it begins each subvolume of the stream.
_AT = re.compile(r"^At (?:subvol|snapshot) (.+)$", re.MULTILINE)


def _kill(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def _text(err: IO[bytes]) -> str:
    err.seek(0)
    return err.read()[-4000:].decode(errors="replace").strip() or "no message"
