"""`arker demo`: the whole story on this machine, or against a deployment.

With nothing configured it runs a server of its own (a subprocess of `arker
serve` on a free port), builds the golden if this host has none, makes a key,
tells the story through the SDK, then removes what it made: the VMs, the key,
the server. With ARKER_API_KEY, ARKER_REGION or ARKER_BASE_URL, and
ARKER_SOURCE_VM set, it tells the same story to that deployment.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from arker.cli._output import cli_errors, err_console, fail, out_console
from arker.cli.goldens import DEFAULT_DATA_DIR, build_golden, engine_at

if TYPE_CHECKING:
    from arker import Arker, Computer, RunResult
    from arker.engine.base import Engine

__all__ = ["embedded_server", "free_port", "register", "tell_story"]

T = TypeVar("T")

SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 15.0
# This Python's arker, whether or not `arker` is on the PATH.
ARKER_COMMAND = [sys.executable, "-c", "from arker.cli import main; main()"]


@dataclass
class Step:
    what: str
    ms: float
    shows: str


class Story:
    """Times each step and remembers every VM made, to delete them at the end."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.vms: list[Computer] = []

    def step(self, what: str, action: Callable[[], tuple[T, str]]) -> T:
        """Run `action`, which returns its value and what it showed; time it."""
        with err_console.status(what):
            start = time.perf_counter()
            value, shows = action()
            ms = (time.perf_counter() - start) * 1000
        self.steps.append(Step(what, ms, shows))
        err_console.print(f"[green]✓[/] {escape(what)} [dim]{ms:.0f} ms[/]")
        return value

    def keep(self, vm: Computer) -> Computer:
        self.vms.append(vm)
        return vm

    def delete_all(self) -> tuple[None, str]:
        count = len(self.vms)
        while self.vms:
            self.vms[-1].delete()
            self.vms.pop()
        return None, f"{count} VMs deleted"

    def cleanup(self) -> None:
        """After a failure: delete what is left, saying what could not be."""
        from arker import ArkerError

        for vm in reversed(self.vms):
            try:
                vm.delete()
            except ArkerError as exc:
                if exc.code != "not_found":
                    err_console.print(f"could not delete {vm.vm_id}: {exc}")


def _first_line(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip().splitlines()[0] if data.strip() else ""


def tell_story(arker: Arker, source: str) -> list[Step]:
    """Fork, run, write and read, fork the fork, run in the background; return
    the timed steps. Every VM made is deleted before this returns."""
    story = Story()
    try:
        _tell(arker, source, story)
        story.step("delete the VMs", story.delete_all)
    finally:
        story.cleanup()
    return story.steps


def _ok(result: RunResult) -> str:
    if result.type != "completed" or result.exit_code != 0:
        code = getattr(result, "exit_code", None)
        err = getattr(result, "stderr_text", "")
        fail("demo_failed", f"a run ended {result.type} (exit {code}): {err}")
    return " | ".join(result.stdout_text.strip().splitlines())


def _tell(arker: Arker, source: str, story: Story) -> None:
    path = "/home/user/hello.txt"

    def fork_source() -> tuple[Computer, str]:
        vm = story.keep(arker.vm(source).fork(name="demo"))
        return vm, f"{vm.vm_id} from {source}"

    vm = story.step(f"fork {source}", fork_source)
    cmd = "uname -a; id; cat /etc/os-release 2>/dev/null | head -1"
    story.step("run uname; id; os-release", lambda: (None, _ok(vm.run(cmd))))

    def write_read() -> tuple[None, str]:
        vm.sync.write_file(path, b"hello from the parent\n")
        return None, f"{path}: {_first_line(vm.sync.read_file(path))!r}"

    story.step("write and read a file", write_read)

    def fork_vm() -> tuple[Computer, str]:
        child = story.keep(vm.fork(name="demo-child"))
        return child, f"{child.vm_id}, a copy-on-write child"

    child = story.step("fork the VM", fork_vm)

    def diverge() -> tuple[None, str]:
        child.sync.write_file(path, b"hello from the child\n")
        mine, theirs = child.sync.read_file(path), vm.sync.read_file(path)
        if mine == theirs:
            fail("demo_failed", "the child's write showed in its parent")
        return None, f"child {_first_line(mine)!r}, parent still {_first_line(theirs)!r}"

    story.step("write in the child only", diverge)

    def background() -> tuple[None, str]:
        run = vm.run("for i in 1 2 3; do echo tick $i; sleep 0.5; done", background=True)
        if run.type != "started":
            fail("demo_failed", f"a background run answered {run.type}")
        # Its output as it comes, over the run's event stream: no polling.
        start, seen = time.perf_counter(), []
        for event in run.events():
            if event.type == "stdout":
                seen.append(f"{event.data.decode().strip()} at {time.perf_counter() - start:.1f} s")
            elif event.status is not None and event.status.state != "completed":
                fail("demo_failed", f"the background run ended {event.status.state}")
        return None, "streamed: " + ", ".join(seen)

    story.step("background run, streamed", background)

    index = _package_index()
    if index is not None:

        def egress() -> tuple[None, str]:
            # Any HTTP answer proves the way out: DNS through the VM's own
            # resolver, then the internet (never the host or private ranges).
            probe = (
                "import http.client as h\n"
                f"c = h.HTTPConnection({index!r}, 80, timeout=20)\n"
                "c.request('HEAD', '/simple/')\n"
                "r = c.getresponse()\n"
                "print('HTTP/1.1', r.status, r.reason)\n"
            )
            head = f"HEAD /simple/ HTTP/1.0\\r\\nHost: {index}\\r\\n\\r\\n"
            cmd = (
                f"if command -v python3 >/dev/null; then python3 -c {shlex.quote(probe)}; "
                f"else printf {shlex.quote(head)} | nc -w 20 {index} 80 | head -1; fi"
            )
            result = vm.run(cmd, timeout_s=60)
            answer = result.stdout_text.strip() if result.type == "completed" else ""
            if not answer.startswith("HTTP/"):
                # The outside is not the demo's to promise (a host may have no
                # way out): say so, and go on.
                return None, f"no answer from {index}: this host may not reach it"
            return None, f"{index} answered {answer}"

        story.step("reach the package index", egress)

    def port() -> tuple[None, str]:
        serve = (
            "cd /home/user && if command -v python3 >/dev/null; then "
            "python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null & "
            "else httpd -p 127.0.0.1:8000 -h /home/user; fi"
        )
        _ok(vm.run(serve))
        token = vm.port_token(8000)
        url = token.url.replace("/?", "/hello.txt?", 1)
        for _ in range(50):  # the server in the VM takes a moment to listen
            r = httpx.get(url, timeout=10)
            if r.status_code != 502:
                break
            time.sleep(0.1)
        if r.status_code != 200:
            fail("demo_failed", f"port 8000 answered {r.status_code}: {r.text[:200]}")
        return None, f"{vm.port_url(8000)}hello.txt: {_first_line(r.content)!r}"

    story.step("serve port 8000, open it", port)


def _package_index() -> str | None:
    """pip's default index host, as pip itself names it (None without pip)."""
    try:
        from pip._internal.models.index import PyPI
    except ImportError:
        return None
    netloc: str = PyPI.netloc
    return netloc


def _print_steps(steps: list[Step], title: str) -> None:
    table = Table(title=title)
    table.add_column("step")
    table.add_column("ms", justify="right")
    table.add_column("shows", overflow="fold")
    for s in steps:
        table.add_row(escape(s.what), f"{s.ms:.0f}", escape(s.shows))
    table.add_row("[bold]total[/]", f"[bold]{sum(s.ms for s in steps):.0f}[/]", "")
    out_console.print(table)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def embedded_server(
    data_dir: Path, log: Path, api_prefix: str = "", serve_args: Sequence[str] = ()
) -> Iterator[str]:
    """`arker serve` (with `serve_args` added) on a free local port until the
    block ends (SIGTERM, then SIGKILL if it will not stop); yields its base
    URL once /healthz answers."""
    port = free_port()
    cmd = [*ARKER_COMMAND, "serve", "--port", str(port), "--data-dir", str(data_dir)]
    if api_prefix:
        cmd += ["--api-prefix", api_prefix]
    cmd += serve_args
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                fail("unavailable", f"arker serve exited {proc.returncode}: {' / '.join(tail)}")
            try:
                if httpx.get(f"{root}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                fail("unavailable", f"arker serve did not answer in {SERVER_START_TIMEOUT_S:g} s")
            time.sleep(0.1)
        yield root + api_prefix
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def _demo_key(data_dir: Path) -> Iterator[str]:
    """A fresh key, made the way `arker keys create` makes one, revoked after."""
    from arker.cli.server import create_key, revoke_key

    key_id, secret = create_key(data_dir, name="arker-demo")
    try:
        yield secret
    finally:
        revoke_key(data_dir, key_id)


@contextmanager
def _local_engine(data_dir: Path) -> Iterator[Engine]:
    from arker import ArkerError

    try:
        with engine_at(data_dir) as engine:
            yield engine
    except ArkerError as exc:
        if exc.code == "unavailable" and "in use" in exc.message:
            # A server already runs on this data dir: say how to use it instead.
            fail(
                "unavailable",
                f"{exc.message}; pass another --data-dir, or point the demo at that server "
                "with ARKER_API_KEY, ARKER_BASE_URL and ARKER_SOURCE_VM",
            )
        raise


def _remote_config() -> tuple[str | None, str | None] | None:
    env = os.environ
    has_key = env.get("ARKER_API_KEY") or env.get("AUTH_KEY")
    has_endpoint = env.get("ARKER_REGION") or env.get("ARKER_BASE_URL")
    if has_key and has_endpoint and env.get("ARKER_SOURCE_VM"):
        return env.get("ARKER_REGION"), env.get("ARKER_BASE_URL")
    return None


def demo(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the embedded server keeps its data.")
    ] = DEFAULT_DATA_DIR,
    golden: Annotated[
        str, typer.Option("--golden", help="`debian`, or `busybox` for a fast one.")
    ] = "debian",
) -> None:
    """Fork a VM, run in it, sync files, fork the fork; time every step."""
    from arker import Arker

    if _remote_config() is not None:
        source = os.environ["ARKER_SOURCE_VM"]
        with Arker() as arker:
            steps = tell_story(arker, source)
        _print_steps(steps, f"arker demo against {arker.base_url} ({source})")
        return
    with ExitStack() as stack:
        start = time.perf_counter()
        with _local_engine(data_dir) as engine:
            if golden not in {g.name for g in engine.goldens()}:
                err_console.print(f"first run: building the {golden} golden")
                build_golden(engine, golden)
        setup = [
            Step(f"golden {golden} ready", (time.perf_counter() - start) * 1000, str(data_dir))
        ]
        log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arker-demo-")))
        start = time.perf_counter()
        base_url = stack.enter_context(embedded_server(data_dir, log / "serve.log"))
        key = stack.enter_context(_demo_key(data_dir))
        setup.append(
            Step("start arker serve, make a key", (time.perf_counter() - start) * 1000, base_url)
        )
        with Arker(key, base_url=base_url) as arker:
            steps = tell_story(arker, golden)
        _print_steps(setup + steps, f"arker demo on this machine ({golden})")
    err_console.print("cleaned up: VMs deleted, key revoked, server stopped")


def register(app: typer.Typer) -> None:
    """Add `arker demo` to the app."""
    app.command()(cli_errors(demo))
