"""A Converse action that fails for a reason nobody planned for is answered, never dropped: the
client gets an error event in the conversation's log saying what failed, and its stream keeps
following the conversation; when the log itself is away, the stream ends UNAVAILABLE."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from redis.exceptions import ConnectionError as RedisConnectionError

from services.orchestrator.driver import Driver
from services.orchestrator.event_log import EventLog
from services.orchestrator.servicer import OrchestratorServicer
from services.orchestrator.voice import Voice
from services.runtime.errors import Unavailable


class _FailingDriver:
    """A driver whose every post fails as a Redis pool out of connections does."""

    async def post(self, *_args: Any) -> None:
        raise RedisConnectionError("Too many connections")


class _Log:
    """An event log that takes every event (or, `reachable=False`, none)."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.appended: list[pb.ConversationEvent] = []

    async def append(self, conversation_id: str, event: pb.ConversationEvent) -> pb.ConversationEvent:
        if not self.reachable:
            raise RedisConnectionError("Connection refused")
        self.appended.append(event)
        return event


REQUEST = pb.ConverseRequest(conversation_id="c1", user_message=pb.UserMessage(message_id="m1", text="hello"))


async def test_a_message_that_fails_on_redis_gets_an_unavailable_error_event_in_the_log() -> None:
    events = _Log()
    servicer = OrchestratorServicer(cast(Driver, _FailingDriver()), cast(EventLog, events), cast(Voice, None))
    out: asyncio.Queue[pb.ConversationEvent | BaseException] = asyncio.Queue()
    await servicer._act_now("c1", REQUEST, out)
    # In the log (so it gets an event id and a reconnecting client sees it), not beside it.
    assert out.empty()
    [event] = events.appended
    assert event.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert event.error.detail.reason == "STORE_UNAVAILABLE"
    assert "Too many connections" in event.error.detail.message
    assert dict(event.error.detail.metadata) == {"action": "user_message", "message_id": "m1"}


async def test_a_refusal_the_log_cannot_take_ends_the_stream_unavailable() -> None:
    servicer = OrchestratorServicer(
        cast(Driver, _FailingDriver()), cast(EventLog, _Log(reachable=False)), cast(Voice, None)
    )
    out: asyncio.Queue[pb.ConversationEvent | BaseException] = asyncio.Queue()
    await servicer._act_now("c1", REQUEST, out)
    ended = out.get_nowait()
    assert isinstance(ended, Unavailable)
    assert "STORE_UNAVAILABLE" in str(ended)
