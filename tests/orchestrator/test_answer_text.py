"""An agent's answer is stored whatever characters its provider sent: a NUL, which the contract
refuses (Postgres cannot store it), is stored as U+FFFD instead of losing the whole answer."""

from __future__ import annotations

from typing import Any, cast

from macp.conversation.v1 import conversation_service_pb2 as conversation_pb

from services.orchestrator.downstream import Downstream
from services.orchestrator.turns import TurnRunner
from tests.orchestrator.turn_specs import a_turn_spec


class _Conversation:
    def __init__(self) -> None:
        self.appended: list[conversation_pb.AppendMessageRequest] = []

    async def AppendMessage(self, request: conversation_pb.AppendMessageRequest, **_: Any) -> None:
        self.appended.append(request)


class _Downstream:
    timeout = 1.0

    def __init__(self) -> None:
        self.conversation = _Conversation()


async def test_a_nul_in_an_answer_is_stored_as_the_replacement_character() -> None:
    downstream = _Downstream()
    runner = TurnRunner(cast(Downstream, downstream), turn_timeout=5, reservation_ttl=60)
    spec = a_turn_spec()
    await runner.store_answer(spec.conversation_id, spec.agent.id, spec.turn_id, "before\x00after")
    [request] = downstream.conversation.appended
    assert request.message.text == "before\ufffdafter"
