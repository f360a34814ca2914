"""One round of a conversation told as an A2A task: its events as A2A stream events, and the task
they add up to.

The round's events are picked out of the conversation's log, where other rounds' events may sit
among them (a message accepted while the previous round still runs, under ENQUEUE): a turn is the
round's when its TurnStarted names the round's message; its deltas, tool calls, completion and
usage follow by turn id; the round's ORCHESTRATION usage by its derived event id; its end is the
RoundCompleted that names its message. An error that names none of the round's started turns
belongs to the round whose RoundCompleted comes next (rounds of a conversation run one at a time).

How the round maps to the task:
- MessageAccepted: SUBMITTED; the first TurnStarted: WORKING (each turn start is a status update
  naming its agent and turn in its metadata);
- each turn is one artifact (id: the turn id, name: the agent's name), its deltas appended chunk
  by chunk, its TurnCompleted the last chunk (with the outcome and the stored message id);
- RoundCompleted: COMPLETED (ran its course, turn limit, yielded, nobody bid), CANCELED (cancelled
  or interrupted), FAILED, or REJECTED when nothing was said because quota or policy refused; the final
  status carries the task's usage (services/runtime/a2a_usage.py) and, when it did not complete,
  what went wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from a2a.types import a2a_pb2 as a2a
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import usage_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.edge.a2a.task_records import TaskRecord
from services.runtime.a2a_usage import USAGE_EXTENSION_URI, TaskUsage
from services.runtime.usage_ids import orchestration_event_id

TERMINAL_STATES: Final = frozenset(
    {a2a.TASK_STATE_COMPLETED, a2a.TASK_STATE_FAILED, a2a.TASK_STATE_CANCELED, a2a.TASK_STATE_REJECTED}
)
_STATE_OF_REASON: Final = {
    pb.ROUND_END_REASON_COMPLETED: a2a.TASK_STATE_COMPLETED,
    pb.ROUND_END_REASON_TURN_LIMIT: a2a.TASK_STATE_COMPLETED,
    pb.ROUND_END_REASON_YIELDED: a2a.TASK_STATE_COMPLETED,
    pb.ROUND_END_REASON_NO_BIDDER: a2a.TASK_STATE_COMPLETED,
    pb.ROUND_END_REASON_CANCELLED: a2a.TASK_STATE_CANCELED,
    pb.ROUND_END_REASON_INTERRUPTED: a2a.TASK_STATE_CANCELED,
    pb.ROUND_END_REASON_FAILED: a2a.TASK_STATE_FAILED,
}
# The errors that refuse work rather than fail it: a round that ran no turn because of one of
# these was rejected (quota, plan or policy), not failed.
_REFUSALS: Final = frozenset(
    code.value[0]
    for code in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
)
_OUTCOMES: Final = {
    pb.TURN_OUTCOME_COMPLETED: "completed",
    pb.TURN_OUTCOME_TRUNCATED: "truncated",
    pb.TURN_OUTCOME_CANCELLED: "cancelled",
    pb.TURN_OUTCOME_INTERRUPTED: "interrupted",
    pb.TURN_OUTCOME_FAILED: "failed",
}

# What the stream of a task sends: its A2A events.
StreamItem = a2a.Task | a2a.TaskStatusUpdateEvent | a2a.TaskArtifactUpdateEvent


def struct(document: Mapping[str, Any]) -> Struct:
    value = Struct()
    value.update(document)
    return value


def agent_message(text: str, record: TaskRecord, message_id: str) -> a2a.Message:
    return a2a.Message(
        message_id=message_id,
        context_id=record.conversation_id,
        task_id=record.task_id,
        role=a2a.ROLE_AGENT,
        parts=[a2a.Part(text=text)],
    )


@dataclass
class _Turn:
    agent_id: str
    chunks: list[str] = field(default_factory=list)
    outcome: str = ""
    message_id: str = ""

    def metadata(self, turn_id: str) -> Struct:
        document = {"agentId": self.agent_id, "turnId": turn_id}
        if self.outcome:
            document |= {"outcome": self.outcome, "messageId": self.message_id}
        return struct(document)


class RoundTask:
    """Follows one round's events (`apply`, in log order) and says what each means to the task."""

    def __init__(self, record: TaskRecord, agent_names: Mapping[str, str]) -> None:
        self.record = record
        self._agent_names = agent_names
        self.state: a2a.TaskState = a2a.TASK_STATE_SUBMITTED
        self._status_text = ""
        self._timestamp = Timestamp()
        self._timestamp.FromMicroseconds(record.created_us)
        self._turns: dict[str, _Turn] = {}
        self._usage = TaskUsage()
        self._orchestration_event_id = orchestration_event_id(record.conversation_id, record.message_id)
        # The round's errors; and those naming none of its turns, held until the next
        # RoundCompleted says whose they were.
        self._errors: list[pb.ErrorEvent] = []
        self._unclaimed_errors: list[pb.ErrorEvent] = []
        # The last event applied: a follower of the round resumes after it.
        self.last_event_id = record.event_id

    @classmethod
    def rejected(cls, record: TaskRecord) -> RoundTask:
        task = cls(record, {})
        task.state = a2a.TASK_STATE_REJECTED
        task._status_text = record.rejection
        return task

    def speakers(self) -> set[str]:
        """The agents that have spoken in the round so far."""
        return {turn.agent_id for turn in self._turns.values()}

    def name_agents(self, names: Mapping[str, str]) -> None:
        self._agent_names = {**self._agent_names, **names}

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    def apply(self, event: pb.ConversationEvent) -> list[StreamItem]:
        """What `event` changes of the task, as the A2A events that tell it (none if it is another
        round's, or nothing a client of the task sees)."""
        self.last_event_id = event.event_id
        match event.WhichOneof("payload"):
            case "turn_started":
                return self._turn_started(event)
            case "token_delta":
                return self._token_delta(event.token_delta)
            case "turn_completed":
                return self._turn_completed(event.turn_completed)
            case "usage":
                usage = event.usage
                mine = usage.event_id == self._orchestration_event_id or (
                    usage.type == usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN and usage.turn_id in self._turns
                )
                if mine:
                    self._usage.add(usage)
                return []
            case "error":
                return self._error(event)
            case "round_completed":
                return self._round_completed(event)
            case _:
                return []

    def _turn_started(self, event: pb.ConversationEvent) -> list[StreamItem]:
        started = event.turn_started
        if started.trigger_message_id != self.record.message_id:
            return []
        self._turns[started.turn_id] = _Turn(agent_id=started.agent_id)
        self._set_state(a2a.TASK_STATE_WORKING, event.time)
        update = self._status_update()
        update.metadata.CopyFrom(struct({"agentId": started.agent_id, "turnId": started.turn_id}))
        return [update]

    def _token_delta(self, delta: pb.TokenDelta) -> list[StreamItem]:
        turn = self._turns.get(delta.turn_id)
        if turn is None:
            return []
        first = not turn.chunks
        turn.chunks.append(delta.text)
        return [self._artifact_update(delta.turn_id, turn, delta.text, append=not first)]

    def _turn_completed(self, completed: pb.TurnCompleted) -> list[StreamItem]:
        turn = self._turns.get(completed.turn_id)
        if turn is None:
            return []
        items: list[StreamItem] = []
        if not turn.chunks and completed.text:
            # An answer that arrived whole (no deltas): one chunk of it all.
            turn.chunks.append(completed.text)
            items.append(self._artifact_update(completed.turn_id, turn, completed.text, append=False))
        turn.outcome = _OUTCOMES.get(completed.outcome, "completed")
        turn.message_id = completed.message_id
        items.append(self._artifact_update(completed.turn_id, turn, "", append=True, last_chunk=True))
        return items

    def _error(self, event: pb.ConversationEvent) -> list[StreamItem]:
        error = event.error
        if error.turn_id not in self._turns:
            # No turn of this round's so far: the round's own (its next turn refused before it
            # started, say) or another round's; the next RoundCompleted tells which.
            self._unclaimed_errors.append(error)
            return []
        self._errors.append(error)
        # A turn's failure is news to the task's client, though the round goes on.
        update = self._status_update(_error_text(error))
        update.metadata.CopyFrom(struct({"turnId": error.turn_id, "error": _error_document(error)}))
        return [update]

    def _round_completed(self, event: pb.ConversationEvent) -> list[StreamItem]:
        completed = event.round_completed
        unclaimed, self._unclaimed_errors = self._unclaimed_errors, []
        if completed.trigger_message_id != self.record.message_id:
            return []
        self._errors += unclaimed
        state = _STATE_OF_REASON.get(completed.reason, a2a.TASK_STATE_FAILED)
        said_nothing = not any(turn.chunks for turn in self._turns.values())
        if state == a2a.TASK_STATE_FAILED and said_nothing and any(e.code in _REFUSALS for e in self._errors):
            state = a2a.TASK_STATE_REJECTED
        if state != a2a.TASK_STATE_COMPLETED:
            self._status_text = "; ".join(_error_text(error) for error in self._errors)
        self._set_state(state, event.time)
        update = self._status_update(self._status_text)
        update.metadata.CopyFrom(self.metadata())
        return [update]

    def cancelled(self, text: str) -> None:
        """The round was cancelled before it started (no RoundCompleted will say so)."""
        self._status_text = text
        self.state = a2a.TASK_STATE_CANCELED

    def _set_state(self, state: a2a.TaskState, time: Timestamp) -> None:
        self.state = state
        if time.seconds or time.nanos:
            self._timestamp.CopyFrom(time)

    def metadata(self) -> Struct:
        return struct({USAGE_EXTENSION_URI: self._usage.document()})

    def status(self, text: str = "") -> a2a.TaskStatus:
        status = a2a.TaskStatus(state=self.state, timestamp=self._timestamp)
        if text:
            status.message.CopyFrom(agent_message(text, self.record, f"{self.record.task_id}:status"))
        return status

    def _status_update(self, text: str = "") -> a2a.TaskStatusUpdateEvent:
        return a2a.TaskStatusUpdateEvent(
            task_id=self.record.task_id, context_id=self.record.conversation_id, status=self.status(text)
        )

    def _artifact(self, turn_id: str, turn: _Turn, text: str) -> a2a.Artifact:
        return a2a.Artifact(
            artifact_id=turn_id,
            name=self._agent_names.get(turn.agent_id, turn.agent_id),
            parts=[a2a.Part(text=text)],
            metadata=turn.metadata(turn_id),
        )

    def _artifact_update(
        self, turn_id: str, turn: _Turn, text: str, *, append: bool, last_chunk: bool = False
    ) -> a2a.TaskArtifactUpdateEvent:
        return a2a.TaskArtifactUpdateEvent(
            task_id=self.record.task_id,
            context_id=self.record.conversation_id,
            artifact=self._artifact(turn_id, turn, text),
            append=append,
            last_chunk=last_chunk,
        )

    def task(self, *, include_artifacts: bool = True, history_length: int | None = None) -> a2a.Task:
        """The task as the events so far make it."""
        task = a2a.Task(
            id=self.record.task_id,
            context_id=self.record.conversation_id,
            status=self.status(self._status_text),
            metadata=self.metadata(),
        )
        if include_artifacts:
            task.artifacts.extend(
                self._artifact(turn_id, turn, "".join(turn.chunks)) for turn_id, turn in self._turns.items()
            )
        if history_length != 0:
            task.history.append(
                a2a.Message(
                    message_id=self.record.message_id,
                    context_id=self.record.conversation_id,
                    task_id=self.record.task_id,
                    role=a2a.ROLE_USER,
                    parts=[a2a.Part(text=self.record.text)],
                )
            )
        return task


def _error_text(error: pb.ErrorEvent) -> str:
    return error.detail.message or error.detail.reason or f"error code {error.code}"


def _error_document(error: pb.ErrorEvent) -> dict[str, Any]:
    return {"code": error.code, "reason": error.detail.reason, "message": error.detail.message}
