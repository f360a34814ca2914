"""What the edge's handlers share: settings and the one channel to Envoy's mesh listener, with stubs."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from macp.conversation.v1 import conversation_service_pb2_grpc
from macp.token.v1 import token_service_pb2_grpc
from starlette.requests import Request

from services.edge.settings import EdgeSettings
from services.runtime.context import REQUEST_ID_HEADER, current_request_id
from services.runtime.mesh import open_mesh_channel


@dataclass
class EdgeContext:
    settings: EdgeSettings
    channel: grpc.aio.Channel
    conversation: conversation_service_pb2_grpc.ConversationServiceStub
    token: token_service_pb2_grpc.TokenServiceStub

    @classmethod
    def open(cls, settings: EdgeSettings) -> EdgeContext:
        channel = open_mesh_channel(settings.common.mesh_address)
        return cls(
            settings=settings,
            channel=channel,
            conversation=conversation_service_pb2_grpc.ConversationServiceStub(channel),
            token=token_service_pb2_grpc.TokenServiceStub(channel),
        )

    async def close(self) -> None:
        await self.channel.close()

    @property
    def timeout(self) -> float:
        """The deadline of one RPC made on behalf of an HTTP request."""
        return self.settings.rpc_timeout_seconds

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata of one RPC made on behalf of the current HTTP request: its request id."""
        return ((REQUEST_ID_HEADER, current_request_id() or ""),)


def edge_context(request: Request) -> EdgeContext:
    context: EdgeContext = request.app.state.edge
    return context
