"""An agent's allowed tools hold at the gateway: with the agent acting for its user (its token
exchanged into the user's, as the orchestrator does for a turn), the catalogue shows only the tools
the agent resource names and a call of any other is refused; the user alone sees and calls all."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format
from macp.token.v1 import token_service_pb2 as token_pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc

from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from tests.example_tools import serving_examples
from tests.token.harness import ACCESS_TOKEN_TYPE, unverified
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration

GATEWAY = service_audience("tool-gateway")
# What the agent acting in a turn may do here: list and call tools, and have its own allow-list read.
AGENT_SCOPES = "tools:read tools:call conversations:read"


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, str]]:
    async with serving_examples() as urls:
        yield urls


async def agent_acting_for_the_user(world: World, agent_id: str, owner_id: str) -> str:
    """The user's token for the gateway with the agent as actor, as the orchestrator gets one."""
    harness = world.tokens.harness
    minter = await harness.register(scope="tools:read tools:call conversations:read macp:agent-token")
    bearer_token = await harness.client_token(minter, "macp:agent-token", [service_audience("token")])
    agent = await harness.stub.IssueAgentToken(
        token_pb.IssueAgentTokenRequest(
            agent_id=agent_id,
            owner_id=owner_id,
            tenant_id=world.tenant.tenant_id,
            scope=AGENT_SCOPES,
        ),
        metadata=bearer(bearer_token.access_token),
    )
    exchanger = await world.tokens.exchanger()
    user = await world.tokens.user_token(world.tenant, [EDGE_AUDIENCE])
    reply = await harness.stub.ExchangeToken(
        token_pb.ExchangeTokenRequest(
            client_id=exchanger.client_id,
            client_secret=exchanger.client_secret,
            subject_token=user,
            subject_token_type=ACCESS_TOKEN_TYPE,
            actor_token=agent.access_token,
            actor_token_type=ACCESS_TOKEN_TYPE,
            audience=[GATEWAY],
            scope=AGENT_SCOPES,
        )
    )
    token: str = reply.access_token
    return token


def call(name: str, **arguments: object) -> pb.CallToolRequest:
    request = pb.CallToolRequest(name=name)
    json_format.ParseDict(arguments, request.arguments)
    return request


async def test_an_agent_lists_and_calls_only_its_allowed_tools(
    world: World, servers: tuple[str, str]
) -> None:
    weather_url, calculator_url = servers
    stub = pb_grpc.ToolGatewayServiceStub(world.channel)
    user = bearer(await world.tokens.user_token(world.tenant, [GATEWAY]))
    for name, url in (("weather", weather_url), ("calc", calculator_url)):
        await stub.CreateToolServer(
            pb.CreateToolServerRequest(tool_server=pb.ToolServer(name=name, url=url)),
            metadata=user,
            timeout=10,
        )
    agent = await world.agent("Ada", allowed_tools=["calc__add", "weather__*"])
    owner = unverified(await world.tokens.user_token(world.tenant, [EDGE_AUDIENCE]))[1]["sub"]
    as_agent = bearer(await agent_acting_for_the_user(world, agent.id, owner))

    everything = await stub.ListTools(pb.ListToolsRequest(), metadata=user, timeout=10)
    assert len(everything.tools) == 4
    listed = await stub.ListTools(pb.ListToolsRequest(), metadata=as_agent, timeout=10)
    assert [t.name for t in listed.tools] == ["calc__add", "weather__forecast"]

    assert (await stub.CallTool(call("calc__add", a=1, b=2), metadata=as_agent, timeout=10)).text == "3"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CallTool(call("calc__multiply", a=2, b=3), metadata=as_agent, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"agent {agent.id} may not use calc__multiply" in (refused.value.details() or "")
    assert (await stub.CallTool(call("calc__multiply", a=2, b=3), metadata=user, timeout=10)).text == "6"
