"""The Arker client and the VM handles it returns.

    client = AsyncArker(region="aws-us-west-2")
    vm = await client.vm("debian").fork(name="job")
    result = await vm.run("echo hi")
    if result.type == "completed":
        print(result.stdout_text)
    await vm.delete()

Only I/O lives here; requests are built, and answers decoded, in `_base` and `_wire`.
`_sync.py` is generated from `_async.py` by scripts/unasync: edit `_async.py`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from types import TracebackType
from typing import Any, Literal, overload

import anyio
import httpx
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from arker.client._base import (
    KEEP,
    UPLOAD_PIECE_BYTES,
    ArkerBase,
    ComputerBase,
    Request,
    RetryArg,
    _as_bytes,
    _size,
)
from arker.client._events import EventParser, Printer, result_of
from arker.client._localtar import pack_dir, unpack_into
from arker.client._models import (
    ArchiveUnpacked,
    FileWritten,
    FsEntry,
    FsList,
    Golden,
    Operation,
    PortToken,
    RunEvent,
    RunResult,
    RunStatus,
    RunStdinWritten,
    StartedRun,
    Vm,
    VmPage,
)
from arker.client._retry import RetryPolicy
from arker.client._wire import (
    decode_archive_unpacked,
    decode_file_written,
    decode_fs_entry,
    decode_fs_list,
    decode_golden,
    decode_goldens,
    decode_operation,
    decode_port_token,
    decode_pty_frame,
    decode_run,
    decode_run_status,
    decode_stdin_written,
    decode_vm,
    decode_vm_page,
    error_from_pty_close,
    error_from_pty_refusal,
    error_from_response,
    error_from_transport,
)
from arker.errors import ArkerError, ErrorCode

__all__ = ["AsyncArker", "AsyncComputer", "AsyncFileSync", "AsyncFs", "AsyncPty", "AsyncRunHandle"]

DEFAULT_RETRY = RetryPolicy()
EVENTS_READ_TIMEOUT_S = 60.0


def _body(request: Request) -> bytes | AsyncIterator[bytes] | None:
    """A large body goes as pieces (see UPLOAD_PIECE_BYTES); made afresh for
    every attempt, as a retry must send it all again."""
    if request.upload is not None:
        return _file_pieces(request.upload)
    content = request.content
    if content is None or len(content) <= UPLOAD_PIECE_BYTES:
        return content
    return _pieces(content)


async def _file_pieces(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while piece := f.read(UPLOAD_PIECE_BYTES):
            yield piece


async def _pieces(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), UPLOAD_PIECE_BYTES):
        yield content[start : start + UPLOAD_PIECE_BYTES]


class AsyncArker(ArkerBase):
    """A client of the Arker API.

    `timeout_s` bounds each HTTP request (a foreground run's request gets the
    run's own `timeout_s` plus 30 s). Closing the client (or leaving `async with`)
    closes the HTTP client it made; one passed in as `http_client` stays open."""

    # Tests replace this to run retries without waiting.
    _sleep = staticmethod(anyio.sleep)

    def __init__(
        self,
        api_key: str | None = None,
        *,
        region: str | None = None,
        base_url: str | None = None,
        burst_base_url: str | None = None,
        retry: RetryArg = DEFAULT_RETRY,
        http_client: httpx.AsyncClient | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(api_key, region, base_url, burst_base_url, retry, timeout_s)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    async def _send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    request.method,
                    request.url,
                    params=request.params,
                    headers=request.headers,
                    json=request.json,
                    content=_body(request),
                    timeout=request.timeout_s,
                )
            except httpx.RequestError as exc:
                delay = self.retry.delay_after(attempt, exc)
                if delay is None:
                    raise error_from_transport(exc) from exc
            else:
                if response.is_success:
                    return response
                delay = self.retry.delay_after(attempt, response)
                if delay is None:
                    raise error_from_response(response)
            await self._sleep(delay)

    async def _events(self, request: Request, parser: EventParser) -> AsyncIterator[RunEvent]:
        """A run's events; on a dropped connection (a server restart, a
        network blip) it reconnects from the last offsets, as the retry policy
        allows, so no byte is lost or repeated."""
        attempt = 0
        while True:
            params = {**(request.params or {})}
            params["stdout_after"], params["stderr_after"] = parser.offsets
            # Keep-alives come every 15 s: a minute of silence is a dead link.
            timeout = httpx.Timeout(request.timeout_s, read=EVENTS_READ_TIMEOUT_S)
            failure: httpx.Response | httpx.RequestError
            try:
                async with self._http.stream(
                    "GET", request.url, params=params, headers=request.headers, timeout=timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        failure = response
                    else:
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            attempt = 0  # it moved on: a later drop starts afresh
                            yield event
                            if event.type == "end":
                                return
                        failure = httpx.RemoteProtocolError("the stream ended before `end`")
            except httpx.TransportError as exc:
                failure = exc
            attempt += 1
            delay = self.retry.delay_after(attempt, failure)
            if delay is None:
                if isinstance(failure, httpx.Response):
                    raise error_from_response(failure)
                raise error_from_transport(failure)
            await self._sleep(delay)

    def vm(self, vm_id: str) -> AsyncComputer:
        """A handle on a golden or a VM, routed by its name; sends no request."""
        return AsyncComputer(self, vm_id, self.endpoints.for_source(vm_id))

    async def goldens(self) -> builtins.list[Golden]:
        """The goldens `fork` accepts as a source (from the normal endpoint)."""
        return decode_goldens(await self._send(self._goldens_request()))

    async def publish_golden(
        self,
        name: str,
        from_vm: str,
        *,
        description: str | None = None,
        for_all: bool = False,
    ) -> Golden:
        """Publish the VM `from_vm`'s files, as they are now, as the golden
        `name` (a read-only snapshot, in constant time): this key's org sees
        and forks it; with `for_all` (an admin key), every org does."""
        request = self._publish_golden_request(name, from_vm, description, for_all)
        return decode_golden(await self._send(request))

    async def import_golden(
        self,
        name: str,
        tarball: str | os.PathLike[str],
        *,
        description: str | None = None,
        for_all: bool = False,
        wait: bool = True,
        timeout_s: float | None = None,
    ) -> Operation:
        """Import a root filesystem tarball (plain, gzip or zstd; streamed
        from disk) as the golden `name`. With `wait`, returns the operation
        once it succeeded and raises its error if it failed (a tarball with
        no /bin/sh: invalid_request); else returns it running."""
        request = self._import_golden_request(name, Path(tarball), description, for_all)
        op = decode_operation(await self._send(request))
        return await self.wait_operation(op.operation_id, timeout_s=timeout_s) if wait else op

    async def delete_golden(self, name: str) -> None:
        """Delete one of this org's goldens (an admin key: also one for all);
        VMs already forked from it keep working."""
        await self._send(self._delete_golden_request(name))

    async def operation(self, operation_id: str) -> Operation:
        """An operation (an import) of this key's org, as it is now."""
        return decode_operation(await self._send(self._operation_request(operation_id)))

    async def wait_operation(
        self, operation_id: str, *, timeout_s: float | None = None, poll_s: float = 0.5
    ) -> Operation:
        """Poll the operation until it ends: the operation if it succeeded,
        else its error raised as ArkerError (with the status it carries);
        `timeout_s` passed first: ArkerError(timeout)."""
        deadline = None if timeout_s is None else monotonic() + timeout_s
        while True:
            op = await self.operation(operation_id)
            if op.state == "succeeded":
                return op
            if op.state == "failed":
                err = op.error
                if err is None:
                    raise ArkerError(ErrorCode.INTERNAL, f"operation {operation_id} failed")
                raise ArkerError(err.code, err.message, err.status)
            if deadline is not None and monotonic() >= deadline:
                raise ArkerError(
                    ErrorCode.TIMEOUT, f"operation {operation_id} still running after {timeout_s} s"
                )
            await self._sleep(poll_s)

    async def list(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        label: Mapping[str, str] | None = None,
        parent_id: str | None = None,
        state: Literal["running", "stopped", "lost"] | None = None,
    ) -> VmPage:
        """One page of this key's VMs on the normal endpoint, newest first:
        those with every label in `label` (e.g. {"team": "ml"}), forked from
        `parent_id`, in `state`; `total` counts all that match."""
        request = self._list_request(limit, offset, label, parent_id, state)
        return decode_vm_page(await self._send(request))

    async def get(self, vm_id: str) -> Vm:
        """One VM, asked of the endpoint its id routes to."""
        endpoint = self.endpoints.for_source(vm_id)
        return decode_vm(await self._send(self._get_request(endpoint, vm_id)))

    async def aclose(self) -> None:
        """Close the HTTP client, if this client made it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncArker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncComputer(ComputerBase[AsyncArker]):
    """A golden or a VM. Every call goes to the endpoint it is pinned to; on
    leaving `async with`, the VM is deleted."""

    def __init__(
        self, arker: AsyncArker, vm_id: str, endpoint: str, info: Vm | None = None
    ) -> None:
        super().__init__(arker, vm_id, endpoint, info)
        self.sync = AsyncFileSync(self)
        self.fs = AsyncFs(self)
        self.network = AsyncNetwork(self)

    async def _send(self, request: Request) -> httpx.Response:
        return await self._arker._send(request)

    async def fork(
        self,
        *,
        name: str | None = None,
        durable: bool = False,
        resources: Mapping[str, Any] | BaseModel | None = None,
        network: Mapping[str, Any] | BaseModel | None = None,
        ttl_s: int | None = KEEP,
        idle_stop_s: int | None = KEEP,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        cpu: float | None = None,
        memory_mib: int | None = None,
        pids: int | None = None,
    ) -> AsyncComputer:
        """A copy-on-write copy of this golden or VM, pinned to the same endpoint.
        `resources`, e.g. {"disk_mib": 2048, "cpu": 2} (or arker.Resources), and
        `network`, e.g. {"egress": True, "allow": ["example.com"]} or {"egress": False},
        override what the fork would inherit; omitted, the parent's or the server's
        default. `cpu`, `memory_mib` and `pids` are shorthands for those resources:
        the VM sees that size from inside (`nproc`, `free`, /proc, /sys/fs/cgroup).
        `ttl_s`: deleted that many seconds from now; `idle_stop_s`: stopped after
        that long with nothing to do (files kept); None for neither, left out for
        the server's default (never the parent's). `labels`: {key: value} to find
        it by with `list(label=...)`; a fork does not inherit them."""
        request = self._fork_request(
            name, durable, idempotency_key, resources, network, ttl_s, idle_stop_s, labels,
            sizes={"cpu": cpu, "memory_mib": memory_mib, "pids": pids},
        )  # fmt: skip
        response = await self._send(request)
        vm = decode_vm(response)
        return AsyncComputer(self._arker, vm.vm_id, self.endpoint, vm)

    @overload
    async def run(
        self,
        command: str,
        *,
        background: Literal[True],
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        user: Literal["user", "root"] | None = None,
        idempotency_key: str | None = None,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        stdin_open: bool = False,
    ) -> AsyncRunHandle: ...

    @overload
    async def run(
        self,
        command: str,
        *,
        background: Literal[False] = False,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        user: Literal["user", "root"] | None = None,
        idempotency_key: str | None = None,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        stdin_open: bool = False,
    ) -> RunResult: ...

    @overload
    async def run(
        self,
        command: str,
        *,
        background: bool = False,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        user: Literal["user", "root"] | None = None,
        idempotency_key: str | None = None,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        stdin_open: bool = False,
    ) -> RunResult | AsyncRunHandle: ...

    async def run(
        self,
        command: str,
        *,
        background: bool = False,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        user: Literal["user", "root"] | None = None,
        idempotency_key: str | None = None,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        stdin_open: bool = False,
    ) -> RunResult | AsyncRunHandle:
        """Run `command` with /bin/sh -c. Foreground waits for the end (completed,
        timed_out or cancelled); with `on_stdout`/`on_stderr` it streams, each
        called with text as it comes. Background returns at once an
        `AsyncRunHandle` (a `StartedRun`: `.events()`, `.wait()`, `.send_stdin()`,
        `.signal()`); `stdin_open` keeps its stdin open for `send_stdin`."""
        streamed = on_stdout is not None or on_stderr is not None
        request = self._run_request(
            command,
            background=background or streamed,
            timeout_s=timeout_s,
            env=env,
            cwd=cwd,
            stdin=stdin,
            user=user,
            idempotency_key=idempotency_key,
            stdin_open=stdin_open,
        )
        result = decode_run(await self._send(request))
        if result.type != "started":
            return result
        handle = self.run_handle(result.run_id)
        if background:
            return handle
        printer = Printer(on_stdout, on_stderr)
        async for event in handle.events():
            printer.take(event)
            if event.status is not None:
                printer.flush()
                return result_of(event.status, printer, timeout_s)
        raise ArkerError(ErrorCode.INVALID_RESPONSE, "the run's events ended without its end")

    def run_handle(self, run_id: str) -> AsyncRunHandle:
        """The handle of a run of this VM, from its id alone (say, in a new
        process after a crash)."""
        return AsyncRunHandle(run_id=run_id, vm=self)

    async def run_status(
        self,
        run_id: str,
        *,
        output: bool = True,
        stdout_after: int | None = None,
        stderr_after: int | None = None,
    ) -> RunStatus:
        """A run's state, output so far and `retry_count`. `output=False`
        leaves the output out (a cheap poll); `stdout_after`/`stderr_after`
        give each stream from an offset (at most 1 MiB; `.stdout_start` says
        where it starts)."""
        request = self._run_status_request(run_id, output, stdout_after, stderr_after)
        return decode_run_status(await self._send(request))

    def run_events(
        self, run_id: str, *, stdout_after: int = 0, stderr_after: int = 0
    ) -> AsyncIterator[RunEvent]:
        """A run's output as it comes, then its `end`; it reconnects by itself
        and resumes where it was."""
        parser = EventParser(stdout_after, stderr_after)
        request = self._run_events_request(run_id, stdout_after, stderr_after)
        return self._arker._events(request, parser)

    async def send_stdin(
        self, run_id: str, data: bytes | str, *, close: bool = False
    ) -> RunStdinWritten:
        """Append to the stdin of a run started with `stdin_open`; `close`
        then closes it (the command reads end-of-file)."""
        return decode_stdin_written(await self._send(self._stdin_request(run_id, data, close)))

    async def signal_run(self, run_id: str, signal: str) -> RunStatus:
        """Send a signal ("SIGINT", "SIGTERM", ...) to the run's process group."""
        return decode_run_status(await self._send(self._signal_request(run_id, signal)))

    async def cancel_run(self, run_id: str) -> RunStatus:
        """Kill a run's process tree; a finished run is returned as it is."""
        return decode_run_status(await self._send(self._cancel_run_request(run_id)))

    async def update(self, *, ttl_s: int | None = KEEP, idle_stop_s: int | None = KEEP) -> Vm:
        """Move the VM's TTL (`ttl_s` seconds from now; None: never deleted) or
        change its idle stop (None: never stopped); what is left out stays."""
        self.info = decode_vm(await self._send(self._update_request(ttl_s, idle_stop_s)))
        return self.info

    async def restart(self) -> Vm:
        """Kill every process of the VM (a fork bomb too) and start it again;
        its files stay, runs in flight end `failed`."""
        self.info = decode_vm(await self._send(self._restart_request()))
        return self.info

    async def delete(self) -> None:
        """Kill the VM's processes and free its storage."""
        await self._send(self._delete_request())

    async def get(self) -> Vm:
        """The VM as the server sees it now (also kept in `.info`)."""
        self.info = decode_vm(await self._send(self._refresh_request()))
        return self.info

    async def port_token(self, port: int, *, ttl_s: int | None = None) -> PortToken:
        """A URL that opens `port` of this VM in a browser with no API key, for
        `ttl_s` seconds (the server's default: an hour); `.url`, `.expires_at`."""
        return decode_port_token(await self._send(self._port_token_request(port, ttl_s)))

    async def pty(
        self,
        *,
        user: Literal["user", "root"] = "user",
        cols: int = 80,
        rows: int = 24,
        command: str | None = None,
        term: str | None = None,
    ) -> AsyncPty:
        """An interactive terminal in this VM: a login shell of `user` (or
        `command`, by /bin/sh -c) on a pty of `cols` x `rows`, once it runs.
        Closing it ends the shell and everything it started."""
        url, headers = self._pty_target(user, cols, rows, command, term)
        opening = connect(
            url,
            additional_headers=headers,
            open_timeout=self._arker.timeout_s,
            max_size=None,
            compression=None,
        )
        try:
            # Entered, not awaited: the sync twin's connect() warns when it
            # is not used as a context manager; the handle closes it itself.
            ws = await opening.__aenter__()
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ArkerError(
                ErrorCode.UNAVAILABLE if status >= 500 else ErrorCode.NOT_FOUND,
                f"the server refused the terminal: HTTP {status}",
                status,
            ) from exc
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise ArkerError(
                ErrorCode.CONNECTION_ERROR, f"cannot open a terminal at {url}: {exc}", 0
            ) from exc
        pty = AsyncPty(ws)
        try:
            await pty._started()
        except BaseException:
            await ws.close()
            raise
        return pty

    async def __aenter__(self) -> AsyncComputer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.delete()
        except ArkerError as error:
            if error.code != ErrorCode.NOT_FOUND:  # already deleted is fine
                raise


class AsyncPty:
    """A terminal in a VM, from `AsyncComputer.pty`. `send` types, `recv` (or
    `output()`) reads what the terminal shows, `resize` changes its size;
    after the shell exits, `recv` gives b"" and `exit_code` holds its status
    (None when the VM ended it). Closing it (or leaving `async with`) ends the
    shell and all it started."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.done = False
        self.exit_code: int | None = None

    async def _started(self) -> None:
        """Wait for the server's first frame: started, or the refusal."""
        try:
            message = await self._ws.recv()
        except ConnectionClosed as exc:
            self._closed(exc)
            raise ArkerError(
                ErrorCode.CONNECTION_ERROR, "the terminal closed as it opened", 0
            ) from exc
        frame = decode_pty_frame(message if isinstance(message, str) else "")
        if frame.type == "error":
            try:
                await self._ws.recv()
            except ConnectionClosed as exc:
                raise error_from_pty_refusal(frame, exc.rcvd.code if exc.rcvd else None) from None
            raise error_from_pty_refusal(frame, None)
        if frame.type != "started":
            raise ArkerError(ErrorCode.INVALID_RESPONSE, f"the terminal began with {frame.type}")

    async def send(self, data: bytes | str) -> None:
        """Type `data` (str as UTF-8); Ctrl-C is b"\\x03", Enter b"\\r"."""
        await self._ws.send(_as_bytes(data, "data"))

    async def resize(self, cols: int, rows: int) -> None:
        """The window's new size (the shell's programs get SIGWINCH)."""
        await self._ws.send(_size(cols, rows))

    async def recv(self) -> bytes:
        """What the terminal shows next, as it comes; b"" once it has ended."""
        while not self.done:
            try:
                message = await self._ws.recv()
            except ConnectionClosed as exc:
                self._closed(exc)
                return b""
            if isinstance(message, bytes):
                return message
            frame = decode_pty_frame(message)
            if frame.type == "exit":
                self.exit_code = frame.exit_code
                self.done = True
        return b""

    async def output(self) -> AsyncIterator[bytes]:
        """The terminal's output, piece by piece, until it ends."""
        while chunk := await self.recv():
            yield chunk

    async def wait(self) -> int | None:
        """Read (and drop) the output until the shell exits; its exit status."""
        while await self.recv():
            pass
        return self.exit_code

    def _closed(self, exc: ConnectionClosed) -> None:
        """The connection ended: normally after the exit frame, else an error."""
        already = self.done
        self.done = True
        code = exc.rcvd.code if exc.rcvd is not None else None
        error = error_from_pty_close(code, exc.rcvd.reason if exc.rcvd is not None else "")
        if error is None and not already and code is None:
            error = ArkerError(ErrorCode.CONNECTION_ERROR, "the terminal's connection was lost", 0)
        if error is not None and not already:
            raise error from exc

    async def aclose(self) -> None:
        """End the terminal: the shell and all it started are killed."""
        self.done = True
        await self._ws.close()

    async def __aenter__(self) -> AsyncPty:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@dataclass(frozen=True, kw_only=True)
class AsyncRunHandle(StartedRun):
    """A background run: follow it, feed it, signal it. Rebuilt from an id
    with `vm.run_handle(run_id)`."""

    vm: AsyncComputer = field(repr=False, compare=False)

    def events(self, *, stdout_after: int = 0, stderr_after: int = 0) -> AsyncIterator[RunEvent]:
        """Its output as it comes (from the given offsets), then `end`."""
        return self.vm.run_events(self.run_id, stdout_after=stdout_after, stderr_after=stderr_after)

    async def wait(self) -> RunStatus:
        """Wait for the end (over the event stream, not by polling); the final
        status, with the output the server kept."""
        async for event in self.vm.run_events(self.run_id):
            if event.type == "end":
                break
        return await self.vm.run_status(self.run_id)

    async def status(self, *, output: bool = True) -> RunStatus:
        return await self.vm.run_status(self.run_id, output=output)

    async def send_stdin(self, data: bytes | str, *, close: bool = False) -> RunStdinWritten:
        return await self.vm.send_stdin(self.run_id, data, close=close)

    async def close_stdin(self) -> RunStdinWritten:
        return await self.vm.send_stdin(self.run_id, b"", close=True)

    async def signal(self, name: str) -> RunStatus:
        return await self.vm.signal_run(self.run_id, name)

    async def cancel(self) -> RunStatus:
        return await self.vm.cancel_run(self.run_id)


class AsyncNetwork:
    """A VM's network policy (what it may reach); the policy in force is
    `vm.info.network`."""

    def __init__(self, computer: AsyncComputer) -> None:
        self._computer = computer

    async def update(self, *, egress: bool | None = None, allow: Any = KEEP) -> Vm:
        """Change the policy, live if the VM runs: new connections follow it.
        `egress` None keeps it; `allow` a list of domain names and IPv4 CIDRs,
        None for the whole internet, left out to keep the current one."""
        c = self._computer
        c.info = decode_vm(await c._send(c._network_request(egress, allow)))
        return c.info


class AsyncFileSync:
    """A VM's files. Paths must be absolute and under /home/user; they are
    checked before any request is sent."""

    def __init__(self, computer: AsyncComputer) -> None:
        self._computer = computer

    async def read_file(self, path: str) -> bytes:
        """The file's bytes."""
        request = self._computer._read_file_request(path)
        return (await self._computer._send(request)).content

    async def write_file(
        self, path: str, data: bytes | str, *, upload_id: str | None = None
    ) -> FileWritten:
        """Write the file atomically (str is encoded as UTF-8). Retries reuse one
        Upload-Id, so the file is written once; pass your own to span processes."""
        request = self._computer._write_file_request(path, data, upload_id)
        return decode_file_written(await self._computer._send(request))


class AsyncFs:
    """A VM's directories: list, stat, mkdir, move, remove, and whole
    directories to and from this machine. Paths must be absolute and under
    /home/user (`/home/user` itself may be listed, stat'ed and copied); they
    are checked before any request is sent."""

    def __init__(self, computer: AsyncComputer) -> None:
        self._computer = computer

    async def list(
        self, path: str = "/home/user", *, depth: int = 1, limit: int = 200, offset: int = 0
    ) -> FsList:
        """One page of the directory's entries (`.entries`, each with name,
        type, size, mode, mtime), `depth` levels down (1..5), sorted by name
        within each directory; `.next_offset` is the next page's offset, or
        None on the last page."""
        request = self._computer._fs_list_request(path, depth, limit, offset)
        return decode_fs_list(await self._computer._send(request))

    async def stat(self, path: str) -> FsEntry:
        """One file's entry; a symlink is reported as itself (`.link_target`)."""
        return decode_fs_entry(await self._computer._send(self._computer._fs_stat_request(path)))

    async def mkdir(self, path: str, *, parents: bool = False) -> FsEntry:
        """Make a directory; `parents` makes missing parents and accepts one
        already there, as `mkdir -p`."""
        request = self._computer._fs_mkdir_request(path, parents)
        return decode_fs_entry(await self._computer._send(request))

    async def move(self, source: str, destination: str, *, overwrite: bool = False) -> FsEntry:
        """Rename within the VM; anything at `destination` is a conflict
        unless `overwrite`."""
        request = self._computer._fs_move_request(source, destination, overwrite)
        return decode_fs_entry(await self._computer._send(request))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file or symlink; a directory only with `recursive`."""
        await self._computer._send(self._computer._fs_remove_request(path, recursive))

    async def download_dir(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Copy the VM's directory `remote` into the local directory `local`
        (made if missing; names already there are replaced); returns it."""
        request = self._computer._archive_download_request(remote)
        data = (await self._computer._send(request)).content
        unpack_into(data, local)
        return Path(local)

    async def upload_dir(self, local: str | os.PathLike[str], remote: str) -> ArchiveUnpacked:
        """Copy the local directory `local` into the VM's directory `remote`
        (made if missing, its parent must exist; names already there are
        replaced), all or nothing."""
        request = self._computer._archive_upload_request(remote, pack_dir(local))
        return decode_archive_unpacked(await self._computer._send(request))
