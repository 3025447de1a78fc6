"""deploy/ as far as this machine can check it: each systemd unit's ExecStart
and each Kubernetes container's command are real `arker` invocations (every
flag exists on that command, every required option is given), and the
manifests parse into the kinds the README promises."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from arker.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _command(words: list[str]) -> Any:
    """The click command (typer's own copy of click) that `arker WORDS...` names."""
    command: Any = typer.main.get_command(app)
    rest = list(words)
    while hasattr(command, "commands") and rest:
        name = rest.pop(0)
        assert name in command.commands, f"no command `arker {name}`"
        command = command.commands[name]
    return command


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def check_invocation(argv: list[str]) -> None:
    """Fail unless argv (`arker ...`) names a real command with real flags."""
    assert Path(argv[0]).name == "arker", argv
    words = argv[1:]
    command = _command([w for w in words if not w.startswith("-")][:2])
    options = {o: p for p in _options(command) for o in p.opts}
    given: set[str] = set()
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("--"):
            continue
        name = word.split("=", 1)[0]
        assert name in options, f"`arker {command.name}` has no {name}"
        param = options[name]
        given.add(param.name or "")
        if not param.is_flag and "=" not in word:
            assert i < len(words) and not words[i].startswith("--"), f"{name} needs a value"
            i += 1
    required = {p.name for p in _options(command) if p.required}
    assert required <= given, f"`arker {command.name}` misses {required - given}"


def _exec_start(unit: Path) -> list[str]:
    lines = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, unit
    return shlex.split(lines[0].removeprefix("ExecStart="))


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_run_real_commands(unit: Path) -> None:
    check_invocation(_exec_start(unit))


def test_the_units_are_the_two_kinds() -> None:
    commands = {tuple(_exec_start(u)[1:3]) for u in UNITS}
    assert ("host", "--database-url") in commands
    assert ("serve", "--cluster") in commands


def test_a_wrong_flag_is_caught() -> None:
    with pytest.raises(AssertionError, match="has no --no-such-flag"):
        check_invocation(["arker", "host", "--no-such-flag", "x"])
    with pytest.raises(AssertionError, match="misses"):
        check_invocation(["arker", "host", "--data-dir", "/x"])
    with pytest.raises(AssertionError, match="no command"):
        check_invocation(["arker", "hots"])


def _docs() -> list[dict[str, object]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_manifests_parse_and_reference_only_real_flags() -> None:
    docs = _docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}  # type: ignore[index]
    assert {("DaemonSet", "arker-host"), ("Deployment", "arker-replica"),
            ("ConfigMap", "arker-cluster"), ("Secret", "arker-cluster")} <= kinds  # fmt: skip
    workloads = [d for d in docs if d["kind"] in ("DaemonSet", "Deployment")]
    for doc in workloads:
        spec = doc["spec"]["template"]["spec"]  # type: ignore[index]
        for container in spec["containers"]:
            check_invocation([*container["command"], *container.get("args", [])])
            names = {e["configMapRef"]["name"] if "configMapRef" in e else
                     e["secretRef"]["name"] for e in container["envFrom"]}  # fmt: skip
            assert names == {"arker-cluster"}  # the endpoints come from configuration
        if doc["kind"] == "DaemonSet":
            (host,) = spec["containers"]
            assert host["securityContext"]["privileged"] is True
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert "ARKER_DATABASE_URL" in secret["stringData"]  # type: ignore[operator]
