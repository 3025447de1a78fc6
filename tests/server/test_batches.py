"""Batcher: callers that come while a pass runs share the next pass, every
caller of a failed pass gets its error, and a pass holds at most `most`."""

from __future__ import annotations

import asyncio

import pytest

from arker.server.batches import Batcher


async def test_callers_during_a_pass_share_the_next_one() -> None:
    passes: list[list[int]] = []
    gate = asyncio.Event()

    async def work(items: list[int]) -> None:
        passes.append(list(items))
        if len(passes) == 1:
            await gate.wait()  # the first pass is slow

    batcher: Batcher[int] = Batcher(work)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 50)]
    await asyncio.sleep(0)
    assert not first.done() and not any(t.done() for t in rest)
    gate.set()
    await asyncio.gather(first, *rest)
    assert passes == [[0], list(range(1, 50))]


async def test_a_failed_pass_fails_each_of_its_callers_and_the_next_pass_runs() -> None:
    seen: list[list[str]] = []

    async def work(items: list[str]) -> None:
        seen.append(items)
        if "bad" in items:
            raise RuntimeError("no")

    batcher: Batcher[str] = Batcher(work)
    results = await asyncio.gather(
        batcher.submit("bad"), batcher.submit("also"), return_exceptions=True
    )
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    await batcher.submit("fine")
    assert seen == [["bad", "also"], ["fine"]]


async def test_a_pass_takes_at_most_most() -> None:
    sizes: list[int] = []

    async def work(items: list[int]) -> None:
        sizes.append(len(items))

    batcher: Batcher[int] = Batcher(work, most=10)
    await asyncio.gather(*(batcher.submit(i) for i in range(25)))
    assert sizes == [10, 10, 5]
    await batcher.drain()


async def test_a_cancelled_caller_does_not_cancel_the_pass() -> None:
    done: list[int] = []
    gate = asyncio.Event()

    async def work(items: list[int]) -> None:
        await gate.wait()
        done.extend(items)

    batcher: Batcher[int] = Batcher(work)
    leaving = asyncio.create_task(batcher.submit(1))
    staying = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    gate.set()
    await staying
    assert done == [1, 2]
