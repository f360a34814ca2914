"""The webhook deliverer of one orchestrator process: a task per (subscription, conversation) it
holds the lease of.

Every `poll_seconds` it reads the subscriptions from the conversation service (a tenant-wide one
with the tenant's conversations that had a message within the event logs' idle time, so one
created after the subscription is found at the next read) and starts a task for each stream it
does not run yet; the task takes the stream's lease or, while another process holds it, ends, to
try again at the next read. A held stream's lease is renewed a few times per lease time; a renewal
that fails (a pause outlived the lease, another process took over) stops the stream at once. A
stream whose subscription is gone, or whose conversation fell out of the active window, is
stopped. Failures of one stream (Redis, the conversation service) end that stream only; it starts
again at the next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.orchestrator.event_log import EventLog
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.webhooks.cursors import StreamCursors, StreamLost
from services.orchestrator.webhooks.settings import DeliverySettings
from services.orchestrator.webhooks.stream import Poster, Stream
from services.orchestrator.webhooks.targets import Target, Targets
from services.runtime.errors import DomainError
from services.runtime.sealing import SealError
from services.runtime.settings import CommonSettings, Env
from services.runtime.webhook_secrets import SEALING_KEY

log = logging.getLogger("macp.orchestrator.webhooks")

StreamKey = tuple[str, str]  # (subscription id, conversation id)
RENEWALS_PER_LEASE = 3


class Deliverer:
    def __init__(
        self,
        *,
        owner: str,
        events: EventLog,
        cursors: StreamCursors,
        targets: Targets,
        settings: DeliverySettings,
        active_seconds: float,
    ) -> None:
        self._owner = owner
        self._events = events
        self._cursors = cursors
        self._targets = targets
        self._settings = settings
        self._active_seconds = active_seconds
        self._http = httpx.AsyncClient(timeout=settings.request_timeout_seconds, follow_redirects=False)
        self._poster = Poster(self._http, loopback_allowed=settings.loopback_allowed)
        self._current: dict[str, Target] = {}
        self._streams: dict[StreamKey, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook deliverer")

    async def stop(self) -> None:
        tasks = [task for task in (self._task, *self._streams.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()
        await self._targets.close()

    async def _run(self) -> None:
        while True:
            try:
                self._follow(await self._targets.fetch(self._active_seconds))
            except (grpc.aio.AioRpcError, DomainError, SealError) as exc:
                log.warning("webhook subscriptions could not be read", extra={"error": str(exc)})
            await asyncio.sleep(self._settings.poll_seconds)

    def _follow(self, targets: list[Target]) -> None:
        self._current = {target.subscription_id: target for target in targets}
        wanted = {(target.subscription_id, c) for target in targets for c in target.conversation_ids}
        for key, task in list(self._streams.items()):
            if task.done():
                del self._streams[key]
            elif key not in wanted:
                task.cancel()
                del self._streams[key]
        for key in wanted - self._streams.keys():
            self._streams[key] = asyncio.create_task(self._drive(key), name=f"webhook stream {key}")

    async def _drive(self, key: StreamKey) -> None:
        subscription_id, conversation_id = key
        lease = await self._cursors.acquire(subscription_id, conversation_id, self._owner)
        if lease is None:
            return
        stream = Stream(
            lease,
            lambda: self._current.get(subscription_id),
            cursors=self._cursors,
            events=self._events,
            poster=self._poster,
            targets=self._targets,
            settings=self._settings,
        )
        delivering = asyncio.create_task(stream.run())
        try:
            while not delivering.done():
                await asyncio.wait((delivering,), timeout=self._settings.lease_ms / 1000 / RENEWALS_PER_LEASE)
                if not delivering.done() and not await self._cursors.renew(lease):
                    log.warning("a webhook stream's lease was lost", extra={"stream": key})
                    delivering.cancel()
            if not delivering.cancelled():
                delivering.result()
        except (StreamLost, RedisError, grpc.aio.AioRpcError, DomainError) as exc:
            log.warning("a webhook stream stopped; it starts again", extra={"stream": key, "error": str(exc)})
        finally:
            delivering.cancel()
            await asyncio.gather(delivering, return_exceptions=True)
            with contextlib.suppress(RedisError):
                await self._cursors.release(lease)


@contextlib.asynccontextmanager
async def delivering(
    env: Env,
    redis: aioredis.Redis,
    prefix: str,
    events: EventLog,
    owner: str,
    orchestrator: OrchestratorSettings,
) -> AsyncIterator[None]:
    """The process's deliverer, running while the block runs; nothing at all (and a line saying
    so) where `MACP_WEBHOOKS_SEALING_KEY` is unset, as no secret could be opened."""
    settings = DeliverySettings.from_env(env)
    if settings.sealing_key is None:
        log.info(f"webhooks are not delivered by this process: {SEALING_KEY} is not set")
        yield
        return
    targets = Targets(
        CommonSettings.from_env(env).mesh_address,
        settings.sealing_key,
        initial_access_token=orchestrator.initial_access_token,
        timeout=orchestrator.rpc_timeout_seconds,
    )
    idle = orchestrator.event_idle_seconds
    deliverer = Deliverer(
        owner=owner,
        events=events,
        cursors=StreamCursors(redis, prefix, settings.lease_ms, ttl_seconds=idle),
        targets=targets,
        settings=settings,
        active_seconds=idle,
    )
    await deliverer.start()
    try:
        yield
    finally:
        await deliverer.stop()
