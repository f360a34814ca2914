"""Wiring of the conversation service: its registry entry, its servicer, its migrations, its scopes.

Scopes: every call needs a token for `urn:macp:service:conversation`; reads (`Get*`, `List*`) also
need `conversations:read` and every other RPC (the writes) `conversations:write`. Agents are
conversation resources, so they share these two scopes.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc

from services.conversation.agents import Agents
from services.conversation.servicer import ConversationServicer
from services.conversation.store import AgentStore
from services.runtime.registry import service
from services.runtime.resources import Resources
from services.runtime.server import ServiceDefinition
from services.runtime.settings import Env


async def register(server: grpc.aio.Server, resources: Resources, env: Env) -> None:
    agents = Agents(AgentStore(resources.require_db()))
    # The stubs mark the RPCs not built yet as abstract; at run time the generated base answers them
    # UNIMPLEMENTED, which is what an unbuilt RPC must do.
    servicer = ConversationServicer(agents)  # type: ignore[abstract]
    pb_grpc.add_ConversationServiceServicer_to_server(servicer, server)


READ_SCOPE = "conversations:read"
WRITE_SCOPE = "conversations:write"


def method_scopes() -> dict[str, str]:
    """Each ConversationService method to the scope it needs: reads `conversations:read`, writes
    `conversations:write`."""
    descriptor = pb.DESCRIPTOR.services_by_name["ConversationService"]
    return {
        f"/{descriptor.full_name}/{method.name}": READ_SCOPE
        if method.name.startswith(("Get", "List"))
        else WRITE_SCOPE
        for method in descriptor.methods
    }


DEFINITION = ServiceDefinition(
    spec=service("conversation"),
    register=register,
    migrations_dir=Path(__file__).parent / "migrations",
    method_scopes=method_scopes(),
)
