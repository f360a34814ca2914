"""A turn's answer is stored before its usage is committed, each retried while its service is away,
so a stored answer and a billed turn always come together: an answer that cannot be stored at all
is not billed (its hold is released), and one stored after a restart is billed once."""

from __future__ import annotations

from typing import Any, cast

import grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.common.v1 import usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.downstream import Downstream
from services.orchestrator.rounds import take_turn
from services.orchestrator.turns import Emit, Halt, TurnResult, TurnRunner, TurnSpec
from tests.orchestrator.turn_specs import a_turn_spec


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name.lower())


class _Calls:
    """Every call the downstream fakes answer, in order, failing the first `failures` of a name."""

    def __init__(self, failures: dict[str, list[grpc.StatusCode]]) -> None:
        self.failures = failures
        self.made: list[str] = []

    async def answer(self, name: str) -> None:
        self.made.append(name)
        pending = self.failures.get(name)
        if pending:
            raise rpc_error(pending.pop(0))


class _Stub:
    def __init__(self, calls: _Calls, names: tuple[str, ...]) -> None:
        for name in names:
            setattr(self, name, self._method(calls, name))

    @staticmethod
    def _method(calls: _Calls, name: str) -> Any:
        async def method(request: Any, **_: Any) -> Any:
            await calls.answer(name)
            if name == "AppendMessage":
                return conversation_pb.AppendMessageResponse(message=request.message, created=True)
            return metering_pb.CommitResponse()

        return method


class _Downstream:
    timeout = 1.0

    def __init__(self, calls: _Calls) -> None:
        self.conversation = _Stub(calls, ("AppendMessage",))
        self.metering = _Stub(calls, ("Commit", "Release"))


class _Runner(TurnRunner):
    """A turn runner whose agent always answers "hello" in full."""

    async def generate(
        self, spec: TurnSpec, emit: Emit, halt: Halt
    ) -> tuple[TurnResult, proxy_pb.GenerateCompletion | None]:
        completion = proxy_pb.GenerateCompletion(
            finish_reason=proxy_pb.FINISH_REASON_STOP,
            usage=usage_pb2.UsageDimensions(input_tokens=3, output_tokens=1),
        )
        return TurnResult(pb.TURN_OUTCOME_COMPLETED, "hello"), completion


async def turn_with(
    failures: dict[str, list[grpc.StatusCode]],
) -> tuple[list[str], list[pb.ConversationEvent]]:
    calls = _Calls(failures)
    runner = _Runner(
        cast(Downstream, _Downstream(calls)), turn_timeout=5, reservation_ttl=60, settle_seconds=5
    )
    spec = a_turn_spec()
    events: list[pb.ConversationEvent] = []

    async def emit(event: pb.ConversationEvent) -> None:
        events.append(event)

    async def held() -> None:
        return None

    await take_turn(runner, spec, emit, Halt(), held())
    return calls.made, events


async def test_the_answer_is_stored_then_billed_through_a_conversation_service_restart() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    made, events = await turn_with({"AppendMessage": [unavailable, unavailable]})
    assert made == ["AppendMessage", "AppendMessage", "AppendMessage", "Commit"]
    [completed] = [e.turn_completed for e in events if e.HasField("turn_completed")]
    assert completed.outcome == pb.TURN_OUTCOME_COMPLETED
    assert completed.message_id
    assert [e.usage.type for e in events if e.HasField("usage")] == [usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN]


async def test_an_answer_that_cannot_be_stored_is_not_billed() -> None:
    made, events = await turn_with({"AppendMessage": [grpc.StatusCode.FAILED_PRECONDITION]})
    assert made == ["AppendMessage", "Release"]
    [completed] = [e.turn_completed for e in events if e.HasField("turn_completed")]
    assert (completed.outcome, completed.message_id) == (pb.TURN_OUTCOME_FAILED, "")
    [error] = [e.error for e in events if e.HasField("error")]
    assert error.detail.reason == "STORE_FAILED"
    assert not [e for e in events if e.HasField("usage")]
