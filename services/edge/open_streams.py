"""Streams the edge holds open (WebSocket connections, SSE streams), ended when their token is
revoked.

A stream's token is verified once, when it opens; a request is verified each time. So that a
revocation reaches the open streams too, every stream is registered here under its token's jti,
and a sweep asks the process's `RevocationChecker` about each jti every SWEEP_SECONDS. That checker
is the one every request's verification asks, with its cache: an answer "not revoked" is believed
for its `max_staleness` (1 s by default) and asked of Redis again after that. So the sweep costs
what a token in steady use already costs: one EXISTS per jti per second per process, shared by
every stream of that token and by its requests, and no signature is verified again. A stream whose
token was revoked at time t ends by t + max_staleness + SWEEP_SECONDS: the WebSocket is closed with
4401, the SSE stream gets an `event: error` (UNAUTHENTICATED) and ends.

When Redis cannot be asked, the sweep leaves the streams open and asks again on the next one: a
request fails closed (503), but closing every open stream of every client on a Redis blip would
turn a short outage into a reconnect storm.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from redis.exceptions import RedisError

from services.runtime.aio import cancel_and_wait
from services.runtime.auth.revocation import RevocationChecker

log = logging.getLogger("macp.edge.streams")

# How often the open streams' tokens are looked at (most answers come from the checker's cache).
SWEEP_SECONDS = 0.25
# jtis asked about at once in a sweep (each an EXISTS when the checker's answer is stale).
SWEEP_CONCURRENCY = 64


class Revocable(Protocol):
    """An open stream: told once that its token was revoked, it ends itself."""

    def token_revoked(self) -> None: ...


class OpenStreams:
    """The open streams by their token's jti, and the sweep that ends those of revoked tokens."""

    def __init__(self, revocations: RevocationChecker, *, sweep_seconds: float = SWEEP_SECONDS) -> None:
        self._revocations = revocations
        self._sweep_seconds = sweep_seconds
        # jti -> its open streams (a dict as an ordered set: no per-stream allocation but the entry).
        self._by_jti: dict[str, dict[Revocable, None]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(streams) for streams in self._by_jti.values())

    def watch(self, jti: str, stream: Revocable) -> None:
        self._by_jti.setdefault(jti, {})[stream] = None

    def unwatch(self, jti: str, stream: Revocable) -> None:
        streams = self._by_jti.get(jti)
        if streams is not None:
            streams.pop(stream, None)
            if not streams:
                del self._by_jti[jti]

    async def sweep(self) -> int:
        """Ends the streams of every revoked token; how many were ended."""
        jtis = list(self._by_jti)
        ended = 0
        for start in range(0, len(jtis), SWEEP_CONCURRENCY):
            batch = jtis[start : start + SWEEP_CONCURRENCY]
            answers = await asyncio.gather(
                *(self._revocations.is_revoked(jti) for jti in batch), return_exceptions=True
            )
            for jti, revoked in zip(batch, answers, strict=True):
                if isinstance(revoked, (RedisError, OSError, TimeoutError)):
                    continue  # asked again on the next sweep (see the module docstring)
                if isinstance(revoked, BaseException):
                    raise revoked
                if revoked:
                    ended += self._end(jti)
        return ended

    def _end(self, jti: str) -> int:
        streams = self._by_jti.pop(jti, {})
        for stream in streams:
            try:
                stream.token_revoked()
            except Exception:  # one stream's failure to end must not keep the others open
                log.exception("ending a stream of a revoked token failed")
        if streams:
            log.info("streams of a revoked token ended", extra={"streams": len(streams)})
        return len(streams)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            if self._by_jti:
                try:
                    await self.sweep()
                except Exception:  # a bug of ours must not stop every later sweep
                    log.exception("sweeping the open streams failed")
