"""A turn for the tests that drive one turn by hand: agent Ada, tenant acme, nothing said yet."""

from __future__ import annotations

import uuid

from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb

from services.orchestrator.turns import TurnSpec
from services.runtime.principal import Caller


def a_turn_spec() -> TurnSpec:
    return TurnSpec(
        turn_id=str(uuid.uuid4()),
        agent=conversation_pb.Agent(id=str(uuid.uuid4()), name="Ada"),
        caller=Caller("token", principal_pb2.Principal(tenant_id="acme")),
        conversation_id=str(uuid.uuid4()),
        messages=[],
        system_prompt="",
    )
