"""A Converse action that fails for a reason nobody planned for is answered, never dropped: the
client gets an error event saying what failed, and its stream keeps following the conversation."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
from macp.common.v1 import principal_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from redis.exceptions import ConnectionError as RedisConnectionError

from services.orchestrator.downstream import Caller
from services.orchestrator.driver import Driver
from services.orchestrator.event_log import EventLog
from services.orchestrator.servicer import OrchestratorServicer


class _FailingDriver:
    """A driver whose every post fails as a Redis pool out of connections does."""

    async def post(self, *_args: Any) -> None:
        raise RedisConnectionError("Too many connections")


async def test_a_message_that_fails_on_redis_gets_an_unavailable_error_event() -> None:
    servicer = OrchestratorServicer(cast(Driver, _FailingDriver()), cast(EventLog, None))
    out: asyncio.Queue[pb.ConversationEvent | BaseException] = asyncio.Queue()
    request = pb.ConverseRequest(
        conversation_id="c1", user_message=pb.UserMessage(message_id="m1", text="hello")
    )
    caller = Caller("token", principal_pb2.Principal(tenant_id="t1", user_id="u1"))
    await servicer._act_now(caller, "c1", request, out)
    event = out.get_nowait()
    assert isinstance(event, pb.ConversationEvent)
    assert event.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert event.error.detail.reason == "STORE_UNAVAILABLE"
    assert "Too many connections" in event.error.detail.message
