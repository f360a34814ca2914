"""Fixtures of the conversation service tests: the real service in-process over the test's real
Postgres, Redis and S3, authenticating real tokens of two tenants from the real token service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc

from services.conversation.service import DEFINITION as CONVERSATION
from services.runtime.auth.settings import service_audience
from services.runtime.server import RunningService
from tests.runtime.serving import running
from tests.tokens import TokenWorld, bearer_channel, token_world

AUDIENCE = service_audience("conversation")


@dataclass(frozen=True)
class Caller:
    """One tenant's user, calling the service with its own token."""

    stub: pb_grpc.ConversationServiceStub
    tenant_id: str
    user_id: str
    token: str


@dataclass(frozen=True)
class World:
    environ: dict[str, str]
    tokens: TokenWorld
    service: RunningService
    alice: Caller  # tenant A
    bob: Caller  # tenant B
    stack: AsyncExitStack

    async def caller_on(self, port: int, caller: Caller) -> Caller:
        """`caller`'s identity on another instance of the service (listening on `port`)."""
        opened = await self.stack.enter_async_context(bearer_channel(port, caller.token))
        return Caller(pb_grpc.ConversationServiceStub(opened), caller.tenant_id, caller.user_id, caller.token)


def draft_agent(name: str = "Ada", **fields: object) -> pb.Agent:
    return pb.Agent(name=name, provider="local", model="echo-1", **fields)  # type: ignore[arg-type]


async def new_agent(caller: Caller, name: str = "Ada", **fields: object) -> pb.Agent:
    reply = await caller.stub.CreateAgent(pb.CreateAgentRequest(agent=draft_agent(name, **fields)))
    return reply.agent


async def new_conversation(caller: Caller, *agents: pb.Agent, **fields: object) -> pb.Conversation:
    values: dict[str, object] = {"title": "planning", "turn_policy": pb.TURN_POLICY_ROUND_ROBIN, **fields}
    draft = pb.Conversation(participant_agent_ids=[agent.id for agent in agents], **values)  # type: ignore[arg-type]
    reply = await caller.stub.CreateConversation(pb.CreateConversationRequest(conversation=draft))
    return reply.conversation


async def _caller(tokens: TokenWorld, stack: AsyncExitStack, port: int) -> Caller:
    tenant = await tokens.tenant()
    token = await tokens.user_token(tenant, [AUDIENCE])
    opened = await stack.enter_async_context(bearer_channel(port, token))
    stub = pb_grpc.ConversationServiceStub(opened)
    # The user id a token carries is the owner of what it creates.
    probe = await stub.CreateAgent(pb.CreateAgentRequest(agent=draft_agent("probe")))
    await stub.DeleteAgent(pb.DeleteAgentRequest(id=probe.agent.id))
    return Caller(stub, tenant.tenant_id, probe.agent.owner_id, token)


@pytest.fixture
async def world(service_environ: dict[str, str]) -> AsyncIterator[World]:
    async with token_world(service_environ) as tokens, AsyncExitStack() as stack:
        environ = tokens.service_environ(
            {**service_environ, "MACP_CONVERSATION_PORT": "0", "MACP_CONVERSATION_METRICS_PORT": "0"}
        )
        service = await stack.enter_async_context(running(CONVERSATION, environ))
        alice = await _caller(tokens, stack, service.port)
        bob = await _caller(tokens, stack, service.port)
        yield World(environ, tokens, service, alice, bob, stack)


async def stored_messages(database_url: str, conversation_id: str) -> int:
    """How many rows the conversation has in Postgres (what idempotency must keep at one per id)."""
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM conversation_messages WHERE conversation_id = $1",
            uuid.UUID(conversation_id),
        )
        return count
    finally:
        await connection.close()


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error an awaited call failed with (the test fails if it succeeded)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")
