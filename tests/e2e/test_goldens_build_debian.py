"""A golden built from steps on the debian golden, with one apt-get step
(egress from the build VM to Debian's archive), forked by its org."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from live import Live, make_live, stop_live

from arker.cli.golden_build import build_from_steps
from arker.cli.golden_steps import from_options


@pytest.fixture(scope="module")
def debian_live() -> Iterator[Live]:
    server = make_live(None, goldens=("debian",))
    try:
        yield server
    finally:
        stop_live(server)


def test_an_apt_get_step_builds_a_golden(debian_live: Live) -> None:
    steps = from_options(
        "debian",
        [
            ("--user", "root"),
            ("--run", "apt-get update -qq && apt-get install -y -qq --no-install-recommends jq"),
            ("--user", "user"),
            ("--run", "echo '{\"a\": 7}' > /home/user/a.json"),
        ],
    )
    said: list[str] = []
    with debian_live.client() as acme:
        started = time.monotonic()
        built = build_from_steps(acme, "with-jq", steps, say=said.append)
        took = time.monotonic() - started
        assert (built.ran, built.cached) == (2, 0), said
        print(f"debian + apt-get install jq: built in {took:.1f} s")
        with acme.vm("with-jq").fork() as vm:
            out = vm.run("jq .a /home/user/a.json")
            assert out.exit_code == 0 and out.stdout == b"7\n", out
        with debian_live.client("globex") as globex:
            assert "with-jq" not in [g.name for g in globex.goldens()]
        acme.delete_golden("with-jq")
