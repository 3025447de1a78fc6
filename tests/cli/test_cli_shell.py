"""`arker shell` as a person uses it: in a real terminal (tmux, on a socket
of this test's own, killed by that name in a finally), typing with
send-keys and reading the screen with capture-pane, against a real server."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_servers import ARKER, LocalServer, arker

pytestmark = pytest.mark.root

DEADLINE_S = 60.0


@pytest.fixture
def vm(server: LocalServer) -> Iterator[str]:
    proc = arker("fork", "busybox", "--name", "shell-test", env=server.env())
    assert proc.returncode == 0, proc.stderr
    vm_id = proc.stdout.decode().strip()
    yield vm_id
    arker("rm", vm_id, env=server.env())


class Tmux:
    """One tmux server on a socket of its own, one session in it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"arker-pty-test-{uuid.uuid4().hex[:12]}"
        self.env = env
        # Where tmux puts it by default; asked again once the server runs.
        tmpdir = Path(env.get("TMUX_TMPDIR") or "/tmp")
        self.path = tmpdir / f"tmux-{os.getuid()}" / self.socket

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "shell")

    def wait_for(self, text: str, after: int = 0) -> str:
        """The screen once `text` shows on it at least `after` + 1 times."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            screen = self.screen()
            if screen.count(text) > after:
                return screen
            assert time.monotonic() < deadline, f"no {text!r} on the screen:\n{screen}"
            time.sleep(0.1)

    def type(self, line: str) -> None:
        self("send-keys", "-t", "shell", "-l", line)
        self("send-keys", "-t", "shell", "Enter")

    def start(self, command: str, cols: int, rows: int) -> None:
        self("new-session", "-d", "-s", "shell", "-x", str(cols), "-y", str(rows), command)
        self.path = Path(self("display-message", "-p", "#{socket_path}").strip())

    def kill(self) -> None:
        """This tmux server and its socket file (kill-server leaves the file)."""
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=DEADLINE_S
        )
        if self.path.name == self.socket:
            self.path.unlink(missing_ok=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (scripts/install)")
def test_shell_is_a_real_terminal(server: LocalServer, vm: str, tmp_path: Path) -> None:
    status = tmp_path / "status"
    command = f"{shlex.join([*ARKER, 'shell', vm])}; echo $? > {shlex.quote(str(status))}"
    tmux = Tmux({**server.env(), "TERM": "xterm-256color"})
    try:
        tmux.start(command, cols=100, rows=30)
        tmux.type("echo R''EADY")
        tmux.wait_for("READY")
        # The VM's terminal has this window's size, and follows it.
        tmux.type("stty size")
        tmux.wait_for("30 100")
        tmux("resize-window", "-t", "shell", "-x", "120", "-y", "40")
        tmux.type("stty size")
        tmux.wait_for("40 120")
        # Ctrl-C reaches the VM's foreground job, not the local arker.
        tmux.type("sleep 100")
        deadline = time.monotonic() + DEADLINE_S
        while b"sleep 100" not in arker("run", vm, "--", "ps -o args", env=server.env()).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        tmux("send-keys", "-t", "shell", "C-c")
        tmux.type("echo A''LIVE")
        tmux.wait_for("ALIVE")
        assert not status.exists()
        ps = arker("run", vm, "--", "ps -o args", env=server.env()).stdout
        assert b"sleep 100" not in ps
        # The shell's exit status is the command's.
        tmux.type("exit 7")
        deadline = time.monotonic() + DEADLINE_S
        while not status.exists() or not status.read_text().strip():
            assert time.monotonic() < deadline, tmux.screen()
            time.sleep(0.1)
        assert status.read_text().strip() == "7"
    finally:
        tmux.kill()


def test_shell_without_a_terminal(server: LocalServer, vm: str) -> None:
    # Piped in, as a script would: no raw mode, the same exit status.
    proc = arker("shell", vm, "--root", input=b"id -u\nexit 4\n", env=server.env())
    assert proc.returncode == 4, proc.stderr
    assert b"0\r\n" in proc.stdout
    proc = arker("shell", "01NOSUCHVM0000000000000000", env=server.env())
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("error: not_found: ")
