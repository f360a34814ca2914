"""How a streamed A2A message's round is followed (services/edge/a2a/handler.py `_follow`): on the
stream opened before the message was posted when it began early enough, else on one opened from
the message's acceptance; either way every event of the round once, none from before it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from a2a.types import a2a_pb2 as a2a
from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.edge.a2a.handler import A2ACall, MacpRequestHandler
from services.edge.a2a.rounds import RoundTask, StreamItem
from services.edge.a2a.task_records import TaskRecord, TaskRecords
from services.edge.context import EdgeContext
from services.runtime.principal import Caller, acting_for

CONVERSATION = "c0000000-0000-4000-8000-000000000001"
MESSAGE = "m0000000-0000-4000-8000-000000000001"
TURN = "t0000000-0000-4000-8000-000000000001"
AGENT = "a0000000-0000-4000-8000-000000000001"
ACCEPTED = "100-5"


def _events(*pairs: tuple[str, pb.ConversationEvent]) -> list[pb.ConversationEvent]:
    events = []
    for event_id, event in pairs:
        event.event_id = event_id
        events.append(event)
    return events


ROUND = _events(
    (
        "100-6",
        pb.ConversationEvent(
            turn_started=pb.TurnStarted(turn_id=TURN, agent_id=AGENT, trigger_message_id=MESSAGE)
        ),
    ),
    (
        "100-7",
        pb.ConversationEvent(token_delta=pb.TokenDelta(turn_id=TURN, agent_id=AGENT, text="Hel", index=0)),
    ),
    (
        "100-8",
        pb.ConversationEvent(token_delta=pb.TokenDelta(turn_id=TURN, agent_id=AGENT, text="lo", index=1)),
    ),
    (
        "100-9",
        pb.ConversationEvent(turn_completed=pb.TurnCompleted(turn_id=TURN, agent_id=AGENT, text="Hello")),
    ),
    (
        "101-0",
        pb.ConversationEvent(
            round_completed=pb.RoundCompleted(
                trigger_message_id=MESSAGE, turn_count=1, reason=pb.ROUND_END_REASON_COMPLETED
            )
        ),
    ),
)
BEFORE = _events(
    ("99-0", pb.ConversationEvent(token_delta=pb.TokenDelta(turn_id="other", text="old", index=3))),
    (ACCEPTED, pb.ConversationEvent(message_accepted=pb.MessageAccepted(message_id=MESSAGE, sequence=1))),
)


class _Stream:
    """A StreamEvents call: its events, then it waits (as a live stream does) until cancelled."""

    def __init__(self, events: list[pb.ConversationEvent]) -> None:
        self._events = events
        self.cancelled = False

    async def __aiter__(self) -> AsyncIterator[pb.StreamEventsResponse]:
        for event in self._events:
            yield pb.StreamEventsResponse(event=event)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


@dataclass
class _Orchestrator:
    fresh: list[pb.ConversationEvent]
    opened_after: list[str] = field(default_factory=list)

    def StreamEvents(self, request: pb.StreamEventsRequest, timeout: float | None = None) -> _Stream:
        self.opened_after.append(request.after_event_id)
        return _Stream(self.fresh)


class _OpenStreams:
    def watch(self, jti: str, stream: object) -> None: ...

    def unwatch(self, jti: str, stream: object) -> None: ...


async def _follow(
    early: list[pb.ConversationEvent], fresh: list[pb.ConversationEvent]
) -> tuple[list[StreamItem], _Orchestrator]:
    orchestrator = _Orchestrator(fresh)
    edge = cast(
        EdgeContext,
        type("Edge", (), {"orchestrator": orchestrator, "open_streams": _OpenStreams(), "timeout": 5.0})(),
    )
    call = A2ACall(
        edge=edge,
        records=cast(TaskRecords, None),
        agent=conversation_pb.Agent(id=AGENT, name="Ada"),
        tenant_id="t",
    )
    record = TaskRecord(MESSAGE, "t", AGENT, CONVERSATION, MESSAGE, ACCEPTED, 1, 0, "hi")
    task = RoundTask(record, {AGENT: "Ada"})
    caller = Caller(token="", principal=principal_pb2.Principal(token_id="jti"))
    handler = MacpRequestHandler()
    with acting_for(caller):
        items = [item async for item in handler._follow(call, task, cast(Any, _Stream(early)))]
    return items, orchestrator


def _text(items: list[StreamItem]) -> str:
    return "".join(
        part.text
        for item in items
        if isinstance(item, a2a.TaskArtifactUpdateEvent)
        for part in item.artifact.parts
    )


async def test_a_stream_that_began_before_the_acceptance_serves_and_nothing_older_is_told() -> None:
    items, orchestrator = await _follow([*BEFORE, *ROUND], fresh=[])
    assert _text(items) == "Hello"
    assert isinstance(items[-1], a2a.TaskStatusUpdateEvent)
    assert items[-1].status.state == a2a.TASK_STATE_COMPLETED
    assert orchestrator.opened_after == []  # no second stream


async def test_a_stream_that_began_after_the_acceptance_is_set_aside_for_one_from_it() -> None:
    # The early stream's first event is already past the acceptance: events may lie between.
    items, orchestrator = await _follow(ROUND[2:], fresh=ROUND)
    assert orchestrator.opened_after == [ACCEPTED]
    assert _text(items) == "Hello"
    assert items[-1].status.state == a2a.TASK_STATE_COMPLETED  # type: ignore[union-attr]
