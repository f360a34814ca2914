"""The A2A routes of the edge: each agent's card, and its JSON-RPC endpoint on the SDK's dispatcher.

`GET /a2a/agents/{agent_id}/.well-known/agent-card.json` and `POST /a2a/agents/{agent_id}` need a
token like every other route (an agent is its tenant's: another tenant's, or one that does not
exist, is 404 before any A2A is spoken). The endpoint reads the body through the edge's size limit,
then hands the request to `a2a-sdk`'s `JsonRpcDispatcher`, which parses JSON-RPC, checks the
`A2A-Version` header, calls the handler (handler.py) and answers JSON or server-sent events.
"""

from __future__ import annotations

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import DefaultServerCallContextBuilder, ServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from services.edge.a2a.cards import agent_card
from services.edge.a2a.handler import A2ACall, MacpRequestHandler
from services.edge.a2a.task_records import TaskRecords
from services.edge.context import EdgeContext, edge_context
from services.edge.http import read_body
from services.runtime.principal import current_principal

CARD_PATH = "/a2a/agents/{agent_id}/.well-known/agent-card.json"
RPC_PATH = "/a2a/agents/{agent_id}"


def origin(request: Request) -> str:
    """The origin the client reached: its Host, and the scheme the front saw (Envoy sets
    X-Forwarded-Proto from its own listener)."""
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme)
    return f"{scheme}://{request.headers.get('host', request.url.netloc)}"


async def _agent(edge: EdgeContext, agent_id: str) -> conversation_pb.Agent:
    """The caller's tenant's agent (a gRPC NOT_FOUND otherwise, which the edge answers 404)."""
    found: conversation_pb.GetAgentResponse = await edge.conversation.GetAgent(
        conversation_pb.GetAgentRequest(id=agent_id), timeout=edge.timeout
    )
    return found.agent


async def get_agent_card(request: Request) -> Response:
    edge = edge_context(request)
    agent = await _agent(edge, request.path_params["agent_id"])
    return JSONResponse(agent_card_to_dict(agent_card(agent, origin(request), edge.settings.token_issuer)))


class _CallContextBuilder(ServerCallContextBuilder):
    """The SDK's context (headers, requested extensions), with who calls which agent."""

    def __init__(self) -> None:
        self._default = DefaultServerCallContextBuilder()

    def build(self, request: Request) -> ServerCallContext:
        context = self._default.build(request)
        context.state["macp"] = request.state.a2a_call
        return context


def a2a_routes() -> list[Route]:
    dispatcher = JsonRpcDispatcher(
        request_handler=MacpRequestHandler(), context_builder=_CallContextBuilder()
    )

    async def rpc(request: Request) -> Response:
        edge = edge_context(request)
        agent = await _agent(edge, request.path_params["agent_id"])
        body = await read_body(request, edge.settings.max_body_bytes)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        # The dispatcher reads the body again: it gets the one read here, through the limit.
        request = Request(request.scope, replay)
        request.state.a2a_call = A2ACall(
            edge=edge,
            records=TaskRecords(
                edge.redis, edge.settings.redis.key_prefix, edge.settings.a2a_task_ttl_seconds
            ),
            agent=agent,
            tenant_id=current_principal().tenant_id,
        )
        return await dispatcher.handle_requests(request)

    return [
        Route(CARD_PATH, get_agent_card, methods=["GET"]),
        Route(RPC_PATH, rpc, methods=["POST"]),
    ]
