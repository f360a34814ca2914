"""The A2A routes of the edge: each agent's card, and its JSON-RPC endpoint on the SDK's dispatcher.

`GET /a2a/agents/{agent_id}/.well-known/agent-card.json` and `POST /a2a/agents/{agent_id}` need a
token like every other route (an agent is its tenant's: another tenant's, or one that does not
exist, is 404 before any A2A is spoken). The endpoint reads the body through the edge's size limit,
then hands the request to `a2a-sdk`'s `JsonRpcDispatcher`, which parses JSON-RPC, checks the
`A2A-Version` header, calls the handler (handler.py) and answers JSON or server-sent events.
"""

from __future__ import annotations

import time
from collections import OrderedDict

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
AGENT_TTL_SECONDS = 5.0
AGENT_CAPACITY = 4096
RPC_PATH = "/a2a/agents/{agent_id}"


def origin(request: Request) -> str:
    """The origin the client reached: its Host, and the scheme the front saw (Envoy sets
    X-Forwarded-Proto from its own listener)."""
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme)
    return f"{scheme}://{request.headers.get('host', request.url.netloc)}"


class AgentLookups:
    """The agents A2A requests were sent to, as the conversation service answered each caller.

    Every A2A request names its agent, so each would cost a GetAgent through the mesh before any
    work (about 5 ms of a streamed message's first token here: docs/benchmarks.md section 22). An
    answer is kept for `ttl_seconds` per token and agent: the same token sees the same answer the
    service gave it (a token of other scopes, or another tenant's, asks afresh), and an agent
    renamed or deleted shows so within that time. Only found agents are kept; a NOT_FOUND is
    asked again each time."""

    def __init__(self, ttl_seconds: float = AGENT_TTL_SECONDS, capacity: int = AGENT_CAPACITY) -> None:
        self._ttl_seconds = ttl_seconds
        self._capacity = capacity
        self._kept: OrderedDict[tuple[str, str], tuple[float, conversation_pb.Agent]] = OrderedDict()

    async def agent(self, edge: EdgeContext, agent_id: str) -> conversation_pb.Agent:
        """The caller's tenant's agent (a gRPC NOT_FOUND otherwise, which the edge answers 404)."""
        key = (current_principal().token_id, agent_id)
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        found: conversation_pb.GetAgentResponse = await edge.conversation.GetAgent(
            conversation_pb.GetAgentRequest(id=agent_id), timeout=edge.timeout
        )
        self._kept[key] = (now + self._ttl_seconds, found.agent)
        self._kept.move_to_end(key)
        while len(self._kept) > self._capacity:
            self._kept.popitem(last=False)
        return found.agent


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
    lookups = AgentLookups()

    async def get_agent_card(request: Request) -> Response:
        edge = edge_context(request)
        agent = await lookups.agent(edge, request.path_params["agent_id"])
        card = agent_card(agent, origin(request), edge.settings.token_issuer)
        return JSONResponse(agent_card_to_dict(card))

    async def rpc(request: Request) -> Response:
        edge = edge_context(request)
        agent = await lookups.agent(edge, request.path_params["agent_id"])
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
