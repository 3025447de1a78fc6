"""`arker goldens build NAME --from GOLDEN --run/--copy/--env ...` and
`--file Dockerfile` against a real server: the steps run in a fork, the
result is published for every org, and each step is cached so that a
rebuild after changing the last step reruns only that one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_servers import LocalServer, arker, remove_data_dir

from arker import Arker

pytestmark = pytest.mark.root


def _counts(stderr: bytes) -> tuple[int, int]:
    m = re.search(rb"ready: (\d+) steps run, (\d+) from the cache", stderr)
    assert m is not None, stderr.decode()
    return int(m.group(1)), int(m.group(2))


def _read(server: LocalServer, golden: str, *paths: str) -> list[bytes]:
    with (
        Arker(api_key=server.api_key, base_url=server.base_url) as client,
        client.vm(golden).fork() as vm,
    ):
        return [vm.sync.read_file(p) for p in paths]


def test_steps_build_and_the_cache_reruns_only_the_changed_step(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "app"
    (app / "sub").mkdir(parents=True)
    (app / "sub" / "code.txt").write_text("print('hi')\n")
    monkeypatch.chdir(tmp_path)
    data = ["--data-dir", str(server.data_dir)]
    steps = [
        "--from",
        "busybox",
        "--run",
        "echo ran >> /home/user/count",
        "--copy",
        "./app:/home/user/app",
        "--env",
        "GREETING=hi",
    ]
    first = arker("goldens", "build", "built-a", *steps, "--run", "echo $GREETING > g", *data)
    assert first.returncode == 0, first.stderr
    assert _counts(first.stderr) == (3, 0)
    count, code, greet = _read(
        server, "built-a", "/home/user/count", "/home/user/app/sub/code.txt", "/home/user/g"
    )
    assert (count, code, greet) == (b"ran\n", b"print('hi')\n", b"hi\n")

    # The last step changed: only it runs; the first (which appends) is not run again.
    second = arker("goldens", "build", "built-b", *steps, "--run", "echo $GREETING! > g", *data)
    assert second.returncode == 0, second.stderr
    assert _counts(second.stderr) == (1, 2)
    assert _read(server, "built-b", "/home/user/count", "/home/user/g") == [b"ran\n", b"hi!\n"]
    # A file COPY sends changed: that step and the ones after it run.
    (app / "sub" / "code.txt").write_text("print('bye')\n")
    third = arker("goldens", "build", "built-c", *steps, "--run", "echo $GREETING! > g", *data)
    assert _counts(third.stderr) == (2, 1), third.stderr
    assert _read(server, "built-c", "/home/user/app/sub/code.txt") == [b"print('bye')\n"]
    nocache = arker("goldens", "build", "built-d", *steps, "--no-cache", *data)
    assert _counts(nocache.stderr) == (2, 0)

    # Nothing is published of a failed build; a name taken is a conflict.
    failed = arker("goldens", "build", "built-x", "--from", "busybox", "--run", "exit 3", *data)
    assert failed.returncode == 1
    assert b"error: invalid_request: --run #1: RUN exit 3 exited 3" in failed.stderr
    taken = arker("goldens", "build", "built-a", "--from", "busybox", "--run", "true", *data)
    assert taken.returncode == 1 and b"error: conflict: " in taken.stderr
    listed = arker("goldens", "ls", *data).stdout
    assert b"built-a" in listed and b"built-x" not in listed
    for name in ("built-a", "built-b", "built-c", "built-d"):
        assert arker("goldens", "rm", name, *data).returncode == 0


def test_a_dockerfile_builds_and_refuses_what_it_cannot(
    server: LocalServer, tmp_path: Path
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.sh").write_text("echo main\n")
    (tmp_path / "notes.txt").write_text("n\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "# a comment\n"
        "FROM busybox\n"
        "ENV A=1 B=2\n"
        "WORKDIR /home/user/w\n"
        "COPY app /home/user/w/app\n"
        "COPY notes.txt ./\n"
        "USER root\n"
        'RUN id -u > /home/user/w/uid && \\\n    echo "$A$B" > /home/user/w/ab\n'
        "USER user\n"
        'RUN ["sh", "-c", "id -u > /home/user/w/uid2"]\n'
    )
    data = ["--data-dir", str(server.data_dir)]
    built = arker("goldens", "build", "from-docker", "--file", str(dockerfile), *data)
    assert built.returncode == 0, built.stderr
    got = _read(
        server,
        "from-docker",
        "/home/user/w/app/main.sh",
        "/home/user/w/notes.txt",
        "/home/user/w/uid",
        "/home/user/w/ab",
        "/home/user/w/uid2",
    )
    assert got == [b"echo main\n", b"n\n", b"0\n", b"12\n", b"1000\n"]
    assert arker("goldens", "rm", "from-docker", *data).returncode == 0

    for text, said in (
        ("FROM busybox\nRUN true\nEXPOSE 80\n", b"Dockerfile:3: EXPOSE is not supported"),
        ("FROM busybox AS base\n", b"Dockerfile:1: one FROM <golden>"),
        ("RUN true\n", b"Dockerfile:1: RUN before FROM"),
        ("FROM busybox\nUSER nobody\n", b"Dockerfile:2: USER takes user or root"),
        ("FROM busybox\nCOPY notes.txt /etc/\n", b"only under /home/user"),
        ("FROM nothing-like-it\nRUN true\n", b"error: not_found: FROM nothing-like-it"),
    ):
        dockerfile.write_text(text)
        refused = arker("goldens", "build", "refused", "--file", str(dockerfile), *data)
        assert refused.returncode == 1, text
        [line] = refused.stderr.strip().splitlines()[-1:]
        assert said in line, (text, refused.stderr)
    assert b"refused" not in arker("goldens", "ls", *data).stdout


def test_steps_build_with_no_server_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        data = ["--data-dir", str(data_dir)]
        assert arker("goldens", "build", "busybox", *data).returncode == 0
        built = arker("goldens", "build", "solo", "--from", "busybox", "--run", "echo x > f", *data)
        assert built.returncode == 0, built.stderr
        assert not (data_dir / "server.json").exists()  # the build's own server has stopped
        listed = arker("goldens", "ls", *data)
        assert listed.returncode == 0 and b"solo" in listed.stdout
    finally:
        remove_data_dir(data_dir)
