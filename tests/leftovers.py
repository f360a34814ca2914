"""What tests left open in the session's event loop, closed before the loop itself closes.

Every test shares one event loop (pyproject.toml: loop scope "session"). A test that leaves a
task running or a grpc.aio channel or server open hands it to `asyncio.Runner.close()`, which
cancels the tasks and closes the loop while grpc's completion queue still holds callbacks into
it; grpc's Cython layer can then crash the interpreter (grpc/grpc#31441 shows the same crash).
Closing those objects here, while the loop still runs, makes the end of the session orderly,
and the report names what leaked so the test that leaked it can be fixed.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections import Counter

import grpc


def _describe(task: asyncio.Task[object]) -> str:
    coroutine = task.get_coro()
    return getattr(coroutine, "__qualname__", None) or type(coroutine).__name__


def _closed(channel: grpc.aio.Channel) -> bool:
    closed: bool = channel._channel.closed()  # type: ignore[attr-defined]
    return closed


async def close_leftovers() -> None:
    """Cancel the tasks still in the running loop, then close live grpc.aio servers and channels."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    gc.collect()
    servers = [obj for obj in gc.get_objects() if isinstance(obj, grpc.aio.Server)]
    # Only channels still open: a closed one may outlive its test (a fixture's value pytest keeps).
    # grpc.aio has no public "is closed"; its Cython channel says it.
    channels = [obj for obj in gc.get_objects() if isinstance(obj, grpc.aio.Channel) and not _closed(obj)]
    for server in servers:
        await server.stop(grace=None)
    for channel in channels:
        await channel.close()
    gc.collect()
    if tasks or servers or channels:
        kinds = Counter(_describe(task) for task in tasks)
        print(
            f"\nleft open at the end of the session: {len(tasks)} tasks {dict(kinds)}, "
            f"{len(servers)} grpc.aio servers, {len(channels)} grpc.aio channels (now closed)",
            file=sys.__stderr__,
        )
