"""The MCP tools: Arker's SDK as a model sees it.

Each tool is a thin call of the async SDK, made on a client that `Clients`
hands out per call (over stdio one client from the environment; over HTTP
one per request, with the caller's own key). An `ArkerError` comes back as a
tool error, `"<code>: <message>"`, for the model to read and act on, never
as a protocol failure. Output is capped for a model's context window, head
and tail kept, and the cap is said in the answer.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import wraps
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from arker import __version__
from arker.client import AsyncArker, AsyncComputer
from arker.errors import ArkerError

__all__ = ["MAX_OUTPUT_CHARS", "Clients", "build_server", "cap"]

# What a tool returns of a command's output, per stream: about 8k tokens.
MAX_OUTPUT_CHARS = 30_000
PROGRESS_EVERY_S = 2.0

Clients = Callable[[Context], AbstractAsyncContextManager[AsyncArker]]

P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = """\
Arker gives you throwaway Linux VMs. Fork one from a golden (vm_fork source="busybox" \
or "debian"), run shell commands in it (run), read and write its files under /home/user \
(fs_read, fs_write, fs_edit, fs_list), and delete it when done (vm_delete). Forking is \
instant and copy-on-write: to try two approaches, vm_fork the VM you are working in and \
try one in each fork, then keep the better one and delete the other."""

VmId = Annotated[str, Field(description="The VM's id (from vm_fork or vm_list).")]
Path = Annotated[str, Field(description="Absolute path under /home/user, e.g. /home/user/app.py.")]
Command = Annotated[str, Field(description="A shell command, run by /bin/sh -c.")]
Cwd = Annotated[str | None, Field(description="Working directory (default /home/user).")]
Env = Annotated[dict[str, str] | None, Field(description="Environment variables to set.")]
User = Annotated[Literal["user", "root"] | None, Field(description="Who runs it (default user).")]
Encoding = Annotated[
    Literal["text", "base64"],
    Field(description="text (UTF-8; bad bytes replaced when read) or base64, for binary files."),
]


def cap(text: str, limit: int = MAX_OUTPUT_CHARS) -> tuple[str, bool]:
    """`text` cut to `limit` characters (its head and tail, with a note of
    what was left out in the middle), and whether it was cut."""
    if len(text) <= limit:
        return text, False
    half = limit // 2
    dropped = len(text) - 2 * half
    note = f"\n[... {dropped} characters left out: output capped at {limit} ...]\n"
    return text[:half] + note + text[-half:], True


def _tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(fn)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ArkerError as error:
            raise ToolError(f"{error.code}: {error.message}") from error

    return wrapped


def _vm_dict(vm: Any) -> dict[str, Any]:
    return dict(vm.model_dump(mode="json", exclude_none=True))


def _output(stdout: bytes, stderr: bytes) -> dict[str, Any]:
    out, out_cut = cap(stdout.decode("utf-8", errors="replace"))
    err, err_cut = cap(stderr.decode("utf-8", errors="replace"))
    result: dict[str, Any] = {"stdout": out, "stderr": err}
    if out_cut or err_cut:
        result["note"] = (
            f"output capped at {MAX_OUTPUT_CHARS} characters per stream (head and tail kept); "
            "redirect to a file and fs_read it in parts for all of it"
        )
    return result


async def _ticking(ctx: Context, total: float | None, what: str) -> None:
    """Progress notifications every PROGRESS_EVERY_S until cancelled."""
    start = time.monotonic()
    while True:
        await anyio.sleep(PROGRESS_EVERY_S)
        elapsed = time.monotonic() - start
        await ctx.report_progress(elapsed, total, f"{what}: {elapsed:.0f} s")


def build_server(clients: Clients) -> MCPServer:
    """An MCP server whose tools act through `clients`."""
    server = MCPServer("arker", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")

    def tool(fn: Callable[..., Awaitable[Any]]) -> None:
        server.add_tool(_tool_errors(fn), name=fn.__name__, description=fn.__doc__)

    @tool
    async def vm_fork(
        ctx: Context,
        source: Annotated[
            str,
            Field(
                description="A golden name (busybox, debian; see golden_list) or the id of "
                "an existing VM, such as the one you are working in, to branch it."
            ),
        ],
        name: Annotated[str | None, Field(description="A name for the new VM.")] = None,
        egress: Annotated[
            bool | None,
            Field(description="Internet access: false for none. Omitted: the source's."),
        ] = None,
        allow: Annotated[
            list[str] | None,
            Field(
                description="With egress, only these domains (example.com, *.example.org) "
                "and IPv4 CIDRs."
            ),
        ] = None,
        ttl_s: Annotated[
            int | None,
            Field(
                ge=1,
                description="Delete the VM this many seconds from now (so a forgotten "
                "branch does not linger). Omitted: the server's default.",
            ),
        ] = None,
        cpu: Annotated[
            float | None,
            Field(description="CPUs (0.25 and up). Omitted: the source's.", ge=0.25),
        ] = None,
        memory_mib: Annotated[
            int | None,
            Field(description="Memory limit in MiB (128 and up). Omitted: the source's.", ge=128),
        ] = None,
        pids: Annotated[
            int | None,
            Field(description="Most processes at once. Omitted: the source's.", ge=16),
        ] = None,
    ) -> dict[str, Any]:
        """Fork a new VM, in constant time, from a golden image or from another VM.
        A fork of a VM has all its files as they are now (not its running processes):
        use it to branch, try two approaches in two forks, keep the better, delete the
        other. Returns the new VM, with its vm_id."""
        network: dict[str, Any] | None = None
        if egress is not None or allow is not None:
            network = {"egress": True if egress is None else egress, "allow": allow}
        asked = {"cpu": cpu, "memory_mib": memory_mib, "pids": pids}
        resources = {k: v for k, v in asked.items() if v is not None} or None
        async with clients(ctx) as arker:
            extra: dict[str, Any] = {}
            if ttl_s is not None:  # sent only when set: the server's default applies
                extra["ttl_s"] = ttl_s
            vm = await arker.vm(source).fork(
                name=name, network=network, resources=resources, **extra
            )
            assert vm.info is not None
            return _vm_dict(vm.info)

    @tool
    async def golden_list(ctx: Context) -> dict[str, Any]:
        """The goldens (base images) vm_fork accepts as a source."""
        async with clients(ctx) as arker:
            goldens = await arker.goldens()
        return {"goldens": [g.model_dump(mode="json") for g in goldens]}

    @tool
    async def vm_list(
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
        offset: Annotated[int, Field(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Your VMs, newest first, one page; `total` says how many there are."""
        async with clients(ctx) as arker:
            page = await arker.list(limit=limit, offset=offset)
        return {"items": [_vm_dict(v) for v in page.items], "total": page.total}

    @tool
    async def vm_get(ctx: Context, vm_id: VmId) -> dict[str, Any]:
        """One VM: its state, source, network policy and resources."""
        async with clients(ctx) as arker:
            return _vm_dict(await arker.get(vm_id))

    @tool
    async def vm_delete(ctx: Context, vm_id: VmId) -> dict[str, Any]:
        """Delete a VM: its processes are killed and its files are gone for good."""
        async with clients(ctx) as arker:
            await arker.vm(vm_id).delete()
        return {"deleted": vm_id}

    @tool
    async def run(
        ctx: Context,
        vm_id: VmId,
        command: Command,
        timeout_s: Annotated[
            float, Field(gt=0, le=3600, description="Kill it after this many seconds.")
        ] = 120,
        cwd: Cwd = None,
        env: Env = None,
        user: User = None,
    ) -> dict[str, Any]:
        """Run a command in the VM and wait for it to end (at most timeout_s); returns
        its exit code, stdout and stderr. Output is capped at 30 000 characters per stream
        (head and tail kept, and said so). For long jobs use run_background."""
        async with clients(ctx) as arker:
            vm = arker.vm(vm_id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_ticking, ctx, timeout_s, f"running {command[:60]!r}")
                result = await vm.run(command, timeout_s=timeout_s, cwd=cwd, env=env, user=user)
                tg.cancel_scope.cancel()
        if result.type == "started":  # not asked for; a server would not send it
            return {"state": "started", "run_id": result.run_id}
        answer: dict[str, Any] = {"state": result.type, "run_id": result.run_id}
        if result.type == "completed":
            answer["exit_code"] = result.exit_code
        elif result.type == "timed_out":
            answer["note_timeout"] = f"killed after {timeout_s} s"
        answer.update(_output(result.stdout, result.stderr))
        answer["duration_ms"] = result.duration_ms
        return answer

    @tool
    async def run_background(
        ctx: Context,
        vm_id: VmId,
        command: Command,
        timeout_s: Annotated[
            float | None, Field(gt=0, description="Kill it after this many seconds.")
        ] = None,
        cwd: Cwd = None,
        env: Env = None,
        user: User = None,
    ) -> dict[str, Any]:
        """Start a command and return at once with its run_id; follow it with
        run_output, wait for it with run_wait, stop it with run_cancel."""
        async with clients(ctx) as arker:
            handle = await arker.vm(vm_id).run(
                command, background=True, timeout_s=timeout_s, cwd=cwd, env=env, user=user
            )
        return {"run_id": handle.run_id, "state": "started"}

    async def _status(
        vm: AsyncComputer, run_id: str, stdout_offset: int, stderr_offset: int, max_chars: int
    ) -> dict[str, Any]:
        status = await vm.run_status(run_id, stdout_after=stdout_offset, stderr_after=stderr_offset)
        answer: dict[str, Any] = {"run_id": run_id, "state": status.state}
        if status.exit_code is not None:
            answer["exit_code"] = status.exit_code
        for stream, data, start, asked in (
            ("stdout", status.stdout, status.stdout_start, stdout_offset),
            ("stderr", status.stderr, status.stderr_start, stderr_offset),
        ):
            begin = asked if start is None else start
            piece = data[:max_chars]  # bytes: the offsets count bytes
            answer[stream] = piece.decode("utf-8", errors="replace")
            answer[f"next_{stream}_offset"] = begin + len(piece)
            if begin > asked:
                answer[f"{stream}_skipped_bytes"] = begin - asked
        totals = (("stdout", status.stdout_bytes), ("stderr", status.stderr_bytes))
        if any(n is not None and answer[f"next_{s}_offset"] < n for s, n in totals):
            answer["more"] = "more output: call run_output again from the next offsets"
        return answer

    @tool
    async def run_output(
        ctx: Context,
        vm_id: VmId,
        run_id: Annotated[str, Field(description="From run_background or run.")],
        stdout_offset: Annotated[int, Field(ge=0, description="Bytes of stdout already read.")] = 0,
        stderr_offset: Annotated[int, Field(ge=0, description="Bytes of stderr already read.")] = 0,
        max_chars: Annotated[int, Field(ge=1, le=MAX_OUTPUT_CHARS)] = MAX_OUTPUT_CHARS,
    ) -> dict[str, Any]:
        """A run's state and its output from the given byte offsets on (pass back the
        next_stdout_offset / next_stderr_offset of the last call to read only what is new)."""
        async with clients(ctx) as arker:
            return await _status(arker.vm(vm_id), run_id, stdout_offset, stderr_offset, max_chars)

    @tool
    async def run_wait(
        ctx: Context,
        vm_id: VmId,
        run_id: str,
        timeout_s: Annotated[
            float, Field(gt=0, le=3600, description="Wait at most this long; the run goes on.")
        ] = 60,
    ) -> dict[str, Any]:
        """Wait for a background run to end (or timeout_s to pass; the run is not
        killed then). Returns its state, exit code and output (capped, head and tail)."""
        async with clients(ctx) as arker:
            vm = arker.vm(vm_id)
            deadline = time.monotonic() + timeout_s
            delay, last_tick = 0.05, time.monotonic()
            while True:
                status = await vm.run_status(run_id, output=False)
                now = time.monotonic()
                if status.done or now >= deadline:
                    break
                if now - last_tick >= PROGRESS_EVERY_S:
                    last_tick = now
                    waited = timeout_s - (deadline - now)
                    await ctx.report_progress(waited, timeout_s, f"run {run_id} {status.state}")
                await anyio.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 1.0)
            final = await vm.run_status(run_id)
        answer: dict[str, Any] = {"run_id": run_id, "state": final.state}
        if final.exit_code is not None:
            answer["exit_code"] = final.exit_code
        if not final.done:
            answer["note"] = f"still {final.state} after {timeout_s} s; call run_wait again"
        answer.update(_output(final.stdout, final.stderr))
        return answer

    @tool
    async def run_cancel(ctx: Context, vm_id: VmId, run_id: str) -> dict[str, Any]:
        """Kill a run and everything it started; a finished run is left as it is."""
        async with clients(ctx) as arker:
            status = await arker.vm(vm_id).cancel_run(run_id)
        return {"run_id": run_id, "state": status.state, "exit_code": status.exit_code}

    @tool
    async def fs_read(
        ctx: Context,
        vm_id: VmId,
        path: Path,
        offset: Annotated[int, Field(ge=0, description="First byte to return.")] = 0,
        length: Annotated[
            int, Field(ge=1, le=1_000_000, description="Bytes to return at most.")
        ] = MAX_OUTPUT_CHARS,
        encoding: Encoding = "text",
    ) -> dict[str, Any]:
        """Read part of a file: `length` bytes from `offset`. The answer gives the
        file's size and next_offset, to read a large file in parts."""
        async with clients(ctx) as arker:
            data = await arker.vm(vm_id).sync.read_file(path)
        piece = data[offset : offset + length]
        content = (
            piece.decode("utf-8", errors="replace")
            if encoding == "text"
            else base64.b64encode(piece).decode("ascii")
        )
        end = offset + len(piece)
        return {
            "path": path,
            "size": len(data),
            "offset": offset,
            "content": content,
            "next_offset": end if end < len(data) else None,
        }

    @tool
    async def fs_write(
        ctx: Context,
        vm_id: VmId,
        path: Path,
        content: Annotated[str, Field(description="The whole new content of the file.")],
        encoding: Encoding = "text",
    ) -> dict[str, Any]:
        """Write a whole file (made with its directories if missing, replaced if there),
        atomically, owned by the VM's user."""
        data = content.encode("utf-8") if encoding == "text" else _b64(content)
        async with clients(ctx) as arker:
            written = await arker.vm(vm_id).sync.write_file(path, data)
        return written.model_dump(mode="json")

    @tool
    async def fs_edit(
        ctx: Context,
        vm_id: VmId,
        path: Path,
        old: Annotated[
            str, Field(min_length=1, description="The exact text to replace; must occur once.")
        ],
        new: Annotated[str, Field(description="What replaces it.")],
    ) -> dict[str, Any]:
        """Replace one exact snippet of a text file. Fails, changing nothing, if the
        snippet is not in the file or is in it more than once (then include more of the
        surrounding lines to make it unique)."""
        async with clients(ctx) as arker:
            vm = arker.vm(vm_id)
            text = (await vm.sync.read_file(path)).decode("utf-8", errors="surrogateescape")
            count = text.count(old)
            if count == 0:
                raise ToolError(f"not_found: the snippet is not in {path}; nothing changed")
            if count > 1:
                raise ToolError(
                    f"conflict: the snippet occurs {count} times in {path}; include more "
                    "context to make it unique; nothing changed"
                )
            edited = text.replace(old, new, 1).encode("utf-8", errors="surrogateescape")
            written = await vm.sync.write_file(path, edited)
        line = text[: text.index(old)].count("\n") + 1
        return {"path": path, "replaced_at_line": line, "size": written.size}

    @tool
    async def fs_list(
        ctx: Context,
        vm_id: VmId,
        path: Annotated[str, Field(description="A directory under /home/user.")] = "/home/user",
        depth: Annotated[int, Field(ge=1, le=5, description="Levels to walk down.")] = 1,
        limit: Annotated[int, Field(ge=1, le=1000)] = 200,
        offset: Annotated[int, Field(ge=0, le=100_000)] = 0,
    ) -> dict[str, Any]:
        """List a directory (sorted by name, `depth` levels down, symlinks not followed):
        each entry's name, type (file, dir, symlink, other), size and mtime. Paged: pass
        next_offset back as offset for the next page."""
        async with clients(ctx) as arker:
            page = await arker.vm(vm_id).fs.list(path, depth=depth, limit=limit, offset=offset)
        entries = [
            {
                "name": e.name,
                "type": e.type,
                "size": e.size,
                "mtime": e.mtime.isoformat(),
                **({"link_target": e.link_target} if e.link_target is not None else {}),
            }
            for e in page.entries
        ]
        answer: dict[str, Any] = {"path": page.path, "entries": entries}
        answer["next_offset"] = page.next_offset
        if page.truncated:
            answer["note"] = "the directory is too large to list whole; some names are missing"
        return answer

    @tool
    async def fs_remove(
        ctx: Context,
        vm_id: VmId,
        path: Path,
        recursive: Annotated[bool, Field(description="Needed to remove a directory.")] = False,
    ) -> dict[str, Any]:
        """Remove a file or symlink, or a directory and all in it with recursive=true."""
        async with clients(ctx) as arker:
            await arker.vm(vm_id).fs.remove(path, recursive=recursive)
        return {"removed": path}

    @tool
    async def port_url(
        ctx: Context,
        vm_id: VmId,
        port: Annotated[
            int,
            Field(ge=1, le=65535, description="A port a server in the VM listens on."),
        ],
        ttl_s: Annotated[
            int | None, Field(ge=1, le=86400, description="How long the browser URL works.")
        ] = None,
    ) -> dict[str, Any]:
        """URLs of a port inside the VM: `url` opens it for a browser without an API key
        (for ttl_s seconds); `api_url` needs the API key in an Authorization header."""
        async with clients(ctx) as arker:
            vm = arker.vm(vm_id)
            token = await vm.port_token(port, ttl_s=ttl_s)
            return {
                "url": token.url,
                "expires_at": token.expires_at.isoformat(),
                "api_url": vm.port_url(port),
            }

    return server


def _b64(content: str) -> bytes:
    try:
        return base64.b64decode(content, validate=True)
    except ValueError as exc:
        raise ToolError(f"invalid_request: content is not valid base64: {exc}") from exc
