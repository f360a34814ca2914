"""One blocking read per process that tells every follower of every conversation when its log grows.

A follower (event_log.py `EventLog.follow`) reads its conversation's events itself, from its own
cursor, without blocking; what it needs from Redis while it is caught up is only word that there is
more. Were each follower to wait in its own blocking XREAD, each would hold one Redis connection
for as long as it follows: fifty clients on fifty conversations exhausted the process's pool
(redis-py's default is 100 connections), and the actions that needed a connection then failed.
Here one XREAD over every followed stream, on a connection of its own, waits for all of them; a
stream followed for the first time rings the tail's doorbell (a one-entry stream that the same
XREAD watches), so the read in flight returns and the next one includes it.

What the tail hands a follower is a wake-up, never entries: the follower's own read checks the
log's floor before its entries (nothing trimmed can be skipped silently) and keeps its own cursor,
so a follower that catches up from an old id and one that is live are the same code. A wake-up
that finds nothing new costs one read; a missed one cannot happen, because the follower clears its
flag before it reads and the tail only moves past entries it has flagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.runtime.aio import cancel_and_wait
from services.runtime.redis_client import text_of

log = logging.getLogger("macp.orchestrator.log_tail")

# The tail's XREAD returns at most this many entries per stream: it only needs the newest id.
SCAN_COUNT: Final = 256
DOORBELL_SECONDS: Final = 3600
RETRY_SECONDS: Final = (0.1, 0.25, 0.5, 1.0)


@dataclass
class _Stream:
    seen: str  # the newest entry id the tail has flagged (or the first follower's cursor)
    followers: set[asyncio.Event] = field(default_factory=set)


class LogTail:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, block_ms: int) -> None:
        self._redis = redis
        self._block_ms = block_ms
        self._prefix = prefix
        self._doorbell = ""
        self._rung = "0-0"
        self._streams: dict[str, _Stream] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def watching(self, stream: str, cursor: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever `stream` gains entries after `cursor` (and, now and then, when it
        has not: the follower re-reads and finds nothing). The caller clears it before each read."""
        news = asyncio.Event()
        state = self._streams.get(stream)
        first = state is None
        if state is None:
            state = self._streams[stream] = _Stream(cursor)
        state.followers.add(news)
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="orchestrator-log-tail")
            elif first:
                await self._ring()
            yield news
        finally:
            state.followers.discard(news)
            if not state.followers and self._streams.get(stream) is state:
                del self._streams[stream]
            if not self._streams and self._task is not None:
                # Nobody follows anything: the blocking read goes, and its connection with it.
                self._task.cancel()
                self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _ring(self) -> None:
        if not self._doorbell:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._doorbell, {"r": "1"}, maxlen=1, approximate=False)
        pipe.expire(self._doorbell, DOORBELL_SECONDS)
        try:
            await pipe.execute()
        except RedisError as exc:
            # The tail's own read comes round within block_ms anyway.
            log.warning("ringing the log tail failed: %s", exc)

    async def _run(self) -> None:
        # A doorbell of each run's own, so a run that has just ended cannot delete the next one's.
        doorbell = self._doorbell = f"{self._prefix}orchestrator:tail:{uuid.uuid4().hex}"
        self._rung = "0-0"
        client = self._redis.client()  # one connection of its own: it blocks
        failures = 0
        try:
            while True:
                streams: dict[bytes | str | memoryview, int | bytes | str | memoryview] = {
                    key: state.seen for key, state in self._streams.items()
                }
                streams[self._doorbell] = self._rung
                try:
                    reply = await client.xread(streams, count=SCAN_COUNT, block=self._block_ms)
                except RedisError as exc:
                    pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                    failures += 1
                    log.warning("the log tail's read failed (retrying in %.2f s): %s", pause, exc)
                    await asyncio.sleep(pause)
                    continue
                failures = 0
                for key, entries in cast(Sequence[tuple[bytes, Sequence[tuple[bytes, object]]]], reply or []):
                    self._flag(text_of(key), text_of(entries[-1][0]))
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
            with contextlib.suppress(Exception):
                await self._redis.delete(doorbell)

    def _flag(self, key: str, newest: str) -> None:
        if key == self._doorbell:
            self._rung = newest
            return
        state = self._streams.get(key)
        if state is None:
            return  # nobody follows it any more
        state.seen = newest
        for news in state.followers:
            news.set()
