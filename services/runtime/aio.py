"""Small asyncio combinators the services share."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def until_set(work: Coroutine[Any, Any, T], event: asyncio.Event) -> asyncio.Future[T]:
    """Run `work` until it ends or `event` is set, whichever comes first, and return its finished
    task: cancelled if the event came first, else holding what `work` returned or raised."""
    task = asyncio.ensure_future(work)
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((task, waiting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))  # its end, without taking its CancelledError as ours
    return task


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel a background task and wait for its end. Its CancelledError is not raised here (an
    error it ended with before the cancel is), but a cancellation of the caller still is, which a
    `suppress(CancelledError)` around `await task` would swallow too."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error
