"""Live runs over a real server: the event stream (live, resumed by
Last-Event-ID, replayed after the end, with a gap past the cap), cheap
status polls, stdin and signals, and their bad input."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from contract_check import check
from live import Live
from sse import Event, events

pytestmark = pytest.mark.root


@pytest.fixture
def api(live: Live) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.keys['acme']}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture
def vm(api: httpx.Client) -> Iterator[str]:
    r = api.post("/v1/vms/busybox/fork", json={})
    assert r.status_code == 201, r.text
    vm_id = r.json()["vm_id"]
    yield vm_id
    api.delete(f"/v1/vms/{vm_id}")


def _start(api: httpx.Client, vm: str, command: str, **extra: object) -> str:
    r = api.post(f"/v1/vms/{vm}/runs", json={"command": command, "background": True, **extra})
    check(r)
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]
    return run_id


def _read(
    api: httpx.Client, vm: str, run_id: str, headers: dict[str, str] | None = None, **params: int
) -> tuple[dict[str, bytes], list[Event], dict[str, object] | None]:
    """Follow the stream to its end: bytes per stream, every event, the end's status."""
    got = {"stdout": b"", "stderr": b""}
    seen: list[Event] = []
    url = f"/v1/vms/{vm}/runs/{run_id}/events"
    with api.stream("GET", url, params=params, headers=headers or {}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for ev in events(r):
            if ev is None:
                continue
            seen.append(ev)
            if ev.event in got:
                got[ev.event] += base64.b64decode(ev.data)
            if ev.event == "end":
                return got, seen, json.loads(ev.data)
    return got, seen, None


def test_events_stream_a_run_as_it_goes_and_end_with_its_status(api: httpx.Client, vm: str) -> None:
    run_id = _start(api, vm, "echo one; sleep 1; echo two >&2; echo three; exit 4")
    t0 = time.monotonic()
    first_at = None
    url = f"/v1/vms/{vm}/runs/{run_id}/events"
    got = {"stdout": b"", "stderr": b""}
    with api.stream("GET", url) as r:
        for ev in events(r):
            if ev is None:
                continue
            if ev.event in got:
                got[ev.event] += base64.b64decode(ev.data)
                first_at = first_at or time.monotonic()
                assert ev.id == f"{len(got['stdout'])}:{len(got['stderr'])}"
            if ev.event == "end":
                end = json.loads(ev.data)
                break
    assert got == {"stdout": b"one\nthree\n", "stderr": b"two\n"}
    assert end["state"] == "completed" and end["exit_code"] == 4
    assert (end["stdout_bytes"], end["stderr_bytes"]) == (10, 4)
    assert first_at is not None and first_at - t0 < time.monotonic() - t0  # before the end
    # An ended run replays, then ends again.
    again, _, end2 = _read(api, vm, run_id)
    assert again == got and end2 is not None and end2["exit_code"] == 4


def test_last_event_id_resumes_with_nothing_lost_or_repeated(api: httpx.Client, vm: str) -> None:
    cmd = "i=0; while [ $i -lt 50 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); sleep 0.02; done"
    run_id = _start(api, vm, cmd)
    whole_out = b"".join(b"out-%d\n" % i for i in range(50))
    whole_err = b"".join(b"err-%d\n" % i for i in range(50))
    out, err, last = b"", b"", None
    # Hang up after each event, and come back with the last id: 100 reconnects at most.
    for _ in range(400):
        headers = {"Last-Event-ID": last} if last else {}
        url = f"/v1/vms/{vm}/runs/{run_id}/events"
        with api.stream("GET", url, headers=headers) as r:
            ev = next(e for e in events(r) if e is not None)
        if ev.event == "end":
            break
        if ev.event == "stdout":
            out += base64.b64decode(ev.data)
        elif ev.event == "stderr":
            err += base64.b64decode(ev.data)
        last = ev.id
    assert (out, err) == (whole_out, whole_err)
    # The query offsets do the same as the header.
    got, _, _ = _read(api, vm, run_id, stdout_after=len(whole_out) - 7, stderr_after=len(whole_err))
    assert got == {"stdout": whole_out[-7:], "stderr": b""}


def test_a_stream_past_the_cap_replays_head_gap_tail(api: httpx.Client, vm: str) -> None:
    # The server keeps 1 MiB a stream in the database (the default): 3 MB of
    # numbered lines leave a middle that is gone.
    cmd = "seq 1 400000"
    run_id = _start(api, vm, cmd)
    whole = b"".join(b"%d\n" % i for i in range(1, 400001))
    got, seen, end = _read(api, vm, run_id)
    assert end is not None and end["stdout_bytes"] == len(whole)
    gaps = [json.loads(e.data) for e in seen if e.event == "gap"]
    dropped = sum(g["bytes"] for g in gaps)
    assert len(got["stdout"]) + dropped == len(whole)
    assert whole.startswith(got["stdout"][:4096]) and whole.endswith(got["stdout"][-4096:])
    # Asked for bytes in the middle long after the end: a gap, then the tail.
    time.sleep(0.5)
    again, seen2, _ = _read(api, vm, run_id, stdout_after=len(whole) // 2)
    gap = next(json.loads(e.data) for e in seen2 if e.event == "gap")
    assert gap["from"] == len(whole) // 2 and gap["stream"] == "stdout"
    assert whole.endswith(again["stdout"]) and gap["to"] + len(again["stdout"]) == len(whole)


def test_status_can_leave_output_out_or_give_a_window(api: httpx.Client, vm: str) -> None:
    run_id = _start(api, vm, "printf 0123456789; sleep 30")
    try:
        deadline = time.monotonic() + 20
        while True:
            r = api.get(f"/v1/vms/{vm}/runs/{run_id}", params={"output": "false"})
            check(r)
            body = r.json()
            if body["stdout_bytes"] == 10 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert body["stdout"] == "" and body["stdout_bytes"] == 10 and body["state"] == "running"
        r = api.get(f"/v1/vms/{vm}/runs/{run_id}", params={"stdout_after": 4})
        check(r)
        body = r.json()
        assert base64.b64decode(body["stdout"]) == b"456789" and body["stdout_start"] == 4
        r = api.get(f"/v1/vms/{vm}/runs/{run_id}", params={"stdout_after": -1})
        assert r.status_code == 422
        check(r)
    finally:
        api.post(f"/v1/vms/{vm}/runs/{run_id}/cancel")


def test_stdin_goes_in_until_closed_then_conflicts(api: httpx.Client, vm: str) -> None:
    run_id = _start(api, vm, "cat; echo bye", stdin=base64.b64encode(b"a\n").decode(),
                    stdin_open=True)  # fmt: skip
    r = api.post(f"/v1/vms/{vm}/runs/{run_id}/stdin", content=b"b\n")
    check(r)
    assert r.json() == {"bytes_written": 2, "closed": False}
    r = api.post(f"/v1/vms/{vm}/runs/{run_id}/stdin", content=b"c\n", params={"close": "true"})
    assert r.json() == {"bytes_written": 2, "closed": True}
    got, _, end = _read(api, vm, run_id)
    assert got["stdout"] == b"a\nb\nc\nbye\n" and end is not None
    r = api.post(f"/v1/vms/{vm}/runs/{run_id}/stdin", content=b"late")
    check(r)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def test_a_signal_goes_to_the_run_and_bad_names_are_refused(api: httpx.Client, vm: str) -> None:
    run_id = _start(api, vm, "trap 'echo int; exit 3' INT; echo up; while :; do sleep 0.1; done")
    with api.stream("GET", f"/v1/vms/{vm}/runs/{run_id}/events") as r:
        next(e for e in events(r) if e is not None and e.event == "stdout")
    r = api.post(f"/v1/vms/{vm}/runs/{run_id}/signal", json={"signal": "SIGBOGUS"})
    check(r)
    assert r.status_code == 422
    r = api.post(f"/v1/vms/{vm}/runs/{run_id}/signal", json={"signal": "SIGINT"})
    check(r)
    assert r.status_code == 200
    got, _, end = _read(api, vm, run_id)
    assert got["stdout"] == b"up\nint\n" and end is not None and end["exit_code"] == 3
    r = api.post(f"/v1/vms/{vm}/runs/{run_id}/signal", json={"signal": "SIGTERM"})
    check(r)
    assert r.status_code == 409


def test_another_orgs_run_and_bad_offsets(live: Live, api: httpx.Client, vm: str) -> None:
    run_id = _start(api, vm, "echo hi")
    headers = {"Authorization": f"Bearer {live.keys['globex']}"}
    for method, path in (
        ("GET", "events"),
        ("POST", "stdin"),
    ):
        r = httpx.request(method, f"{live.url}/v1/vms/{vm}/runs/{run_id}/{path}", headers=headers)
        check(r)
        assert r.status_code == 404
    r = api.get(f"/v1/vms/{vm}/runs/{run_id}/events", headers={"Last-Event-ID": "nonsense"})
    check(r)
    assert r.status_code == 422
    r = api.get(f"/v1/vms/{vm}/runs/nope/events")
    check(r)
    assert r.status_code == 404


def test_sdk_streams_a_foreground_run_and_follows_a_handle(live: Live) -> None:
    from arker import RunHandle

    with live.client() as client:
        vm = client.vm("busybox").fork()
        try:
            seen: list[str] = []
            result = vm.run("echo a; sleep 0.3; echo b >&2; exit 2", on_stdout=seen.append,
                            on_stderr=seen.append)  # fmt: skip
            assert result.type == "completed" and result.exit_code == 2
            assert (result.stdout, result.stderr) == (b"a\n", b"b\n")
            assert "".join(seen) == "a\nb\n"
            handle = vm.run("cat; echo end", background=True, stdin_open=True)
            assert isinstance(handle, RunHandle) and handle.type == "started"
            assert handle.send_stdin("x\n").bytes_written == 2
            handle.close_stdin()
            # A new process would have only the id: rebuild the handle from it.
            again = vm.run_handle(handle.run_id)
            events = list(again.events())
            assert events[-1].type == "end" and events[-1].status is not None
            assert b"".join(e.data for e in events if e.type == "stdout") == b"x\nend\n"
            final = again.wait()
            assert final.state == "completed" and final.stdout == b"x\nend\n"
            assert final.stdout_bytes == 6
            sig = vm.run("trap 'exit 7' TERM; while :; do sleep 0.1; done", background=True)
            time.sleep(0.5)
            sig.signal("SIGTERM")
            assert sig.wait().exit_code == 7
        finally:
            vm.delete()


async def test_async_sdk_events_iterate(live: Live) -> None:
    async with live.aclient() as client:
        vm = await client.vm("busybox").fork()
        try:
            handle = await vm.run("for i in 1 2 3; do echo $i; sleep 0.1; done", background=True)
            out = b""
            async for event in handle.events():
                if event.type == "stdout":
                    out += event.data
            assert out == b"1\n2\n3\n"
            status = await handle.status(output=False)
            assert status.stdout == b"" and status.stdout_bytes == 6
        finally:
            await vm.delete()


def test_a_restart_ends_streams_at_once_and_a_durable_run_streams_on() -> None:
    from live import make_live, stop_live

    own = make_live(None)
    try:
        headers = {"Authorization": f"Bearer {own.keys['acme']}"}
        api = httpx.Client(base_url=own.url, headers=headers, timeout=60)
        vm = api.post("/v1/vms/busybox/fork", json={"durable": True}).json()["vm_id"]
        cmd = "echo go; sleep 3; echo done"
        run_id = _start(api, vm, cmd)
        last = None
        with api.stream("GET", f"/v1/vms/{vm}/runs/{run_id}/events") as r:
            stream = events(r)
            ev = next(e for e in stream if e is not None)
            assert (ev.event, base64.b64decode(ev.data)) == ("stdout", b"go\n")
            last = ev.id
            own.server.proc.send_signal(15)  # type: ignore[union-attr]
            rest = [e for e in stream if e is not None]
        # Ended at the signal: a stream held open (for uvicorn's 5 s of grace)
        # would have carried the run's "done" at 3 s, and its end event.
        assert all(e.event != "end" for e in rest)
        assert not any(e.event == "stdout" and b"done" in base64.b64decode(e.data) for e in rest)
        own.server.proc.wait(30)  # type: ignore[union-attr]
        own.server.proc = None
        own.server.start()  # the durable run starts again from its checkpoint
        api = httpx.Client(base_url=own.url, headers=headers, timeout=60)
        got, _, end = _read(api, vm, run_id, headers={"Last-Event-ID": last or "0:0"})
        assert end is not None and end["retry_count"] == 1 and end["state"] == "completed"
        assert got["stdout"] == b"done\n"  # "go\n" was seen before: not again
        api.delete(f"/v1/vms/{vm}")
    finally:
        stop_live(own)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_slow_readers_and_polls_of_a_chatty_run_keep_the_server_small() -> None:
    """8 streams read a trickle of a run writing 200 MB, and 12 pollers ask its
    status without output: the server's memory stays within a few times the
    output it holds (the cap), and the run is not held up by its readers."""
    import threading

    from live import make_live, stop_live

    own = make_live(None)
    try:
        assert own.server.proc is not None
        pid = own.server.proc.pid
        headers = {"Authorization": f"Bearer {own.keys['acme']}"}
        api = httpx.Client(base_url=own.url, headers=headers, timeout=60)
        vm = api.post("/v1/vms/busybox/fork", json={}).json()["vm_id"]
        before = _rss_bytes(pid)
        run_id = _start(api, vm, "yes | head -c 200000000")
        stop = threading.Event()

        def slow_reader() -> None:
            url = f"/v1/vms/{vm}/runs/{run_id}/events"
            with (
                httpx.Client(base_url=own.url, headers=headers, timeout=60) as c,
                c.stream("GET", url) as r,
            ):
                for _ in r.iter_raw(4096):
                    if stop.wait(0.05):
                        return

        def poller() -> None:
            with httpx.Client(base_url=own.url, headers=headers, timeout=60) as c:
                while not stop.is_set():
                    r = c.get(f"/v1/vms/{vm}/runs/{run_id}", params={"output": "false"})
                    assert r.status_code == 200 and r.json()["stdout"] == ""

        threads = [threading.Thread(target=slow_reader) for _ in range(8)]
        threads += [threading.Thread(target=poller) for _ in range(12)]
        for th in threads:
            th.start()
        peak = before
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                peak = max(peak, _rss_bytes(pid))
                status = api.get(f"/v1/vms/{vm}/runs/{run_id}", params={"output": "false"})
                if status.json()["state"] != "running":
                    break
                time.sleep(0.2)
            body = status.json()
            # The run went to its end while its readers had read almost nothing.
            assert body["state"] == "completed" and body["stdout_bytes"] == 200_000_000
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        print(f"server rss {before / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB")
        assert peak - before < 100 * 1024 * 1024, (before, peak)  # not 200 MB, nor 20 x 16
        api.delete(f"/v1/vms/{vm}")
    finally:
        stop_live(own)
