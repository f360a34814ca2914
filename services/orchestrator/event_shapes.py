"""The events a round writes that more than one module builds: errors, a turn's end, a round's end."""

from __future__ import annotations

import grpc
from macp.common.v1 import error_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.runtime.errors import REASON_METADATA_KEY


def error_event(
    code: grpc.StatusCode, reason: str, message: str, turn_id: str = "", fatal: bool = False
) -> pb.ErrorEvent:
    return pb.ErrorEvent(
        code=code.value[0],
        detail=error_pb2.ErrorDetail(reason=reason, domain="macp.orchestrator", message=message),
        turn_id=turn_id,
        fatal=fatal,
    )


def rpc_failure(exc: grpc.aio.AioRpcError, what: str, reason: str, turn_id: str = "") -> pb.ErrorEvent:
    """An error event for a failed call to another service, keeping its status and its reason."""
    trailing = dict(exc.trailing_metadata() or ())
    callee_reason = trailing.get(REASON_METADATA_KEY)
    event = error_event(exc.code(), reason, f"{what} failed: {exc.code().name}: {exc.details()}", turn_id)
    if isinstance(callee_reason, str):
        event.detail.metadata["callee_reason"] = callee_reason
    return event


def turn_completed(
    turn_id: str, agent_id: str, outcome: pb.TurnOutcome.ValueType, message_id: str = "", text: str = ""
) -> pb.ConversationEvent:
    return pb.ConversationEvent(
        turn_completed=pb.TurnCompleted(
            turn_id=turn_id, agent_id=agent_id, outcome=outcome, message_id=message_id, text=text
        )
    )


def round_completed(message_id: str, reason: pb.RoundEndReason.ValueType, turns: int) -> pb.ConversationEvent:
    return pb.ConversationEvent(
        round_completed=pb.RoundCompleted(trigger_message_id=message_id, turn_count=turns, reason=reason)
    )
