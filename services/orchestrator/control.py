"""Signals to the driver of a round, from whichever process the client talks to.

A client's cancel, a bid, or a message that interrupts (double-texting policy INTERRUPT) may reach
any orchestrator process, while the round runs in the one holding the conversation's lease. They
travel over Redis pub/sub: each process keeps one subscription to every conversation's control
channel and hands a signal to the round it drives, if any. Pub/sub delivers only to who listens
now, which is right here: a signal for a round that is not running has nothing to act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from services.runtime.aio import cancel_and_wait

log = logging.getLogger("macp.orchestrator.control")

SignalKind = Literal["cancel", "interrupt", "bid"]


@dataclass(frozen=True)
class Signal:
    kind: SignalKind
    turn_id: str = ""
    reason: str = ""
    # For bids: the agent, score and rationale a client sent.
    agent_id: str = ""
    score: float = 0.0
    rationale: str = ""

    def encode(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def decode(cls, data: bytes | str) -> Signal:
        fields: dict[str, Any] = json.loads(data)
        return cls(**fields)


Handler = Callable[[Signal], None]


class ControlBus:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}orchestrator:control:"
        self._handlers: dict[str, set[Handler]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def _channel(self, conversation_id: str) -> str:
        return f"{self._prefix}{conversation_id}"

    async def send(self, conversation_id: str, signal: Signal) -> None:
        await self._redis.publish(self._channel(conversation_id), signal.encode())

    @contextlib.contextmanager
    def listening(self, conversation_id: str, handler: Handler) -> Any:
        """Hand `handler` the conversation's signals while the block runs."""
        handlers = self._handlers.setdefault(conversation_id, set())
        handlers.add(handler)
        try:
            yield
        finally:
            handlers.discard(handler)
            if not handlers:
                self._handlers.pop(conversation_id, None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orchestrator-control")
        # A signal sent before the subscription is live would be lost; wait for it (bounded).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5.0)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                async for channel, data in self._messages():
                    conversation_id = channel[len(self._prefix) :]
                    for handler in list(self._handlers.get(conversation_id, ())):
                        handler(Signal.decode(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: resubscribe after a pause
                log.warning("control subscription failed; resubscribing: %s", exc)
                await asyncio.sleep(0.5)

    async def _messages(self) -> AsyncIterator[tuple[str, bytes]]:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.psubscribe(f"{self._prefix}*")
            self._ready.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is None or message.get("type") != "pmessage":
                    continue
                channel = message["channel"]
                yield (channel.decode() if isinstance(channel, bytes) else channel), message["data"]
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
