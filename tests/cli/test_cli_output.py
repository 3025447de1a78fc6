"""What every command shares, without a server: error lines and argument shapes."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from arker.cli import app
from arker.cli._output import cli_errors
from arker.cli.files import _split_remote

OFFLINE = {"ARKER_API_KEY": "ark_test", "ARKER_BASE_URL": "http://127.0.0.1:9"}


def _app_raising(exc: BaseException) -> typer.Typer:
    one = typer.Typer()

    @one.command()
    @cli_errors
    def boom() -> None:
        raise exc

    return one


def test_unexpected_errors_are_one_line_unless_debugging() -> None:
    result = CliRunner().invoke(_app_raising(RuntimeError("bad\nthing")), [], env={})
    assert result.exit_code == 1
    assert result.stderr == "error: internal: RuntimeError: bad thing (ARKER_DEBUG=1 shows more)\n"
    debug = CliRunner().invoke(_app_raising(RuntimeError("x")), [], env={"ARKER_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)


def test_missing_local_file_is_not_found() -> None:
    result = CliRunner().invoke(app, ["cp", "/no/such/file", "vm1:/home/user/x"], env=OFFLINE)
    assert result.exit_code == 1
    assert result.stderr == "error: not_found: No such file or directory: /no/such/file\n"


def test_server_unreachable_is_one_line() -> None:
    result = CliRunner().invoke(app, ["get", "vm1"], env=OFFLINE)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: connection_error: ")
    assert result.stderr.count("\n") == 1


def test_bad_arguments_before_any_request() -> None:
    bad_env = CliRunner().invoke(app, ["run", "vm1", "-e", "X", "--", "true"], env=OFFLINE)
    assert bad_env.stderr == "error: invalid_request: --env takes KEY=VALUE, got 'X'\n"
    bad_user = CliRunner().invoke(app, ["run", "vm1", "--user", "admin", "--", "true"])
    assert bad_user.exit_code == 2  # typer's usage error: not one of user, root
    bad_cat = CliRunner().invoke(app, ["cat", "vm1"], env=OFFLINE)
    assert bad_cat.stderr == "error: invalid_request: expected VM:/home/user/PATH, got 'vm1'\n"


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("vm1:/home/user/x", ("vm1", "/home/user/x")),
        ("01ABC_uswe:/home/user/", ("01ABC_uswe", "/home/user/")),
        ("local.txt", None),
        ("./a:/b", None),  # a local path that holds a colon
        ("a:b", None),  # the VM side's path must be absolute
        (":/x", None),
    ],
)
def test_which_side_is_the_vm(spec: str, parsed: tuple[str, str] | None) -> None:
    assert _split_remote(spec) == parsed
