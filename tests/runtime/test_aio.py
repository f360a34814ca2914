"""The runtime's asyncio combinators: stopping a background task."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.aio import cancel_and_wait


async def test_a_running_task_is_cancelled_and_waited_for() -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait(None)  # nothing started: nothing to stop


async def test_an_error_the_task_ended_with_is_raised() -> None:
    async def fail() -> None:
        raise RuntimeError("broke")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broke"):
        await cancel_and_wait(task)


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(60)  # takes its time to stop

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.01)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    task.cancel()
