"""Existence does not leak across orgs: another org's VM and a VM that never
existed answer the same 404 by the same path (the same queries), so neither
the body nor the time tells them apart."""

from __future__ import annotations

from typing import Any

from harness import Server
from sqlalchemy import event


def _count_queries(server: Server) -> tuple[list[str], Any]:
    seen: list[str] = []
    engine = server.app.state.db.engine.sync_engine

    def before(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(engine, "before_cursor_execute", before)


async def test_another_orgs_vm_and_a_missing_one_look_the_same(server: Server) -> None:
    theirs = (await server.other.post("/v1/vms/busybox/fork", json={})).json()["vm_id"]
    missing = "01KQH2ADR3DCAJF06N4R453WPJ"
    # Warm both paths (a cached row must not make one of them cheaper).
    for _ in range(2):
        await server.other.get(f"/v1/vms/{theirs}")
        await server.client.get(f"/v1/vms/{theirs}")
        await server.client.get(f"/v1/vms/{missing}")
    for path in ("", "/runs/r1", "/files?path=/home/user/x"):
        seen, stop = _count_queries(server)
        try:
            a = await server.client.get(f"/v1/vms/{theirs}{path}")
            queries_theirs = list(seen)
            seen.clear()
            b = await server.client.get(f"/v1/vms/{missing}{path}")
            queries_missing = list(seen)
        finally:
            stop()
        assert a.status_code == b.status_code == 404
        assert a.json()["error"]["code"] == b.json()["error"]["code"] == "not_found"
        assert a.json()["error"]["message"].replace(theirs, "X") == b.json()["error"][
            "message"
        ].replace(missing, "X")
        assert len(queries_theirs) == len(queries_missing) >= 1, (queries_theirs, queries_missing)
        assert queries_theirs == queries_missing
    # The owner still sees it, from the cache or not.
    assert (await server.other.get(f"/v1/vms/{theirs}")).status_code == 200
