"""An outside A2A agent as a participant, through the whole mesh: the orchestrator's round, the
agent proxy calling the remote with the A2A SDK's client (its client secret opened from its sealed
form, a token from the remote's own authorization server), metering, and the remote itself, the
SDK's server on a loopback port (tests/agent_proxy/a2a_remote_server.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import agent_settings_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.agent_proxy.remote_agents import HISTORY_KEY
from services.runtime.auth.settings import service_audience
from services.stack.config import free_port
from services.stack.infra import Infrastructure
from tests.agent_proxy.a2a_remote_server import (
    CLIENT_ID,
    CLIENT_SECRET,
    RemoteAgentServer,
    Scripted,
    TrustedIssuer,
    serving_remote_agent,
)
from tests.conftest import fresh_database, isolated_environ
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration

BREAKER_FAILURES = 2


@pytest.fixture(scope="module")
async def module_environ(infrastructure: Infrastructure) -> AsyncIterator[dict[str, str]]:
    """The module's mesh, with a breaker that opens after BREAKER_FAILURES failures in a row."""
    async with fresh_database(infrastructure) as url:
        yield {
            **isolated_environ(infrastructure, url),
            "MACP_AGENT_PROXY_BREAKER_FAILURES": str(BREAKER_FAILURES),
            "MACP_AGENT_PROXY_BREAKER_OPEN_SECONDS": "60",
        }


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own."""
    return await module_world.other_tenant()


@pytest.fixture
async def remote() -> AsyncIterator[RemoteAgentServer]:
    async with serving_remote_agent() as server:
        yield server


def remote_agent(server: RemoteAgentServer) -> conversation_pb.RemoteAgent:
    return conversation_pb.RemoteAgent(
        card_url=server.card_url,
        auth=conversation_pb.REMOTE_AUTH_CLIENT_CREDENTIALS,
        client_credentials=conversation_pb.RemoteClientCredentials(
            token_url=server.token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        ),
    )


async def outsider(world: World, server: RemoteAgentServer, **fields: object) -> conversation_pb.Agent:
    return await world.agent(
        "Outsider", provider="a2a", model="outsider", remote=remote_agent(server), **fields
    )


async def metered(world: World, agent_id: str) -> metering_pb.UsageTotals:
    """`agent_id`'s usage as metering has it, once its turn's event is in (10 s at most)."""
    metering = metering_grpc.MeteringServiceStub(world.channel)
    token = await world.tokens.user_token(world.tenant, [service_audience("metering")])
    now = int(time.time())
    request = metering_pb.GetUsageRequest(
        tenant_id=world.tenant.tenant_id,
        period=metering_pb.Period(
            start_time=Timestamp(seconds=now - 3600), end_time=Timestamp(seconds=now + 3600)
        ),
        group_by=metering_pb.GROUP_BY_AGENT,
    )
    for _ in range(100):
        usage = await metering.GetUsage(request, metadata=bearer(token), timeout=10)
        totals = [group.totals for group in usage.groups if group.key == agent_id]
        if totals and totals[0].agent_turns:
            return totals[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no usage was metered for {agent_id}")


def turns_of(events: list[pb.ConversationEvent], agent_id: str) -> list[str]:
    return [
        e.turn_started.turn_id
        for e in events
        if e.HasField("turn_started") and e.turn_started.agent_id == agent_id
    ]


def deltas_of(events: list[pb.ConversationEvent], turn_id: str) -> list[str]:
    return [
        e.token_delta.text for e in events if e.HasField("token_delta") and e.token_delta.turn_id == turn_id
    ]


def completed(events: list[pb.ConversationEvent]) -> dict[str, pb.TurnCompleted]:
    return {e.turn_completed.agent_id: e.turn_completed for e in events if e.HasField("turn_completed")}


def errors_of(events: list[pb.ConversationEvent], turn_id: str) -> list[pb.ErrorEvent]:
    return [e.error for e in events if e.HasField("error") and e.error.turn_id == turn_id]


async def round_of(world: World, conversation_id: str, text: str) -> list[pb.ConversationEvent]:
    accepted = await world.post(conversation_id, text)
    return await world.round_events(conversation_id, accepted.event_id, accepted.message_id)


async def test_a_remote_answers_in_a_round_robin_round_streamed_stored_and_metered(
    world: World, remote: RemoteAgentServer
) -> None:
    ada, grace = await world.agent("Ada"), await world.agent("Grace", model="echo-2")
    outside = await outsider(world, remote)
    conversation = await world.conversation([ada, outside, grace])
    events = await round_of(world, conversation.id, "What do you all think?")

    answers = completed(events)
    assert set(answers) == {ada.id, outside.id, grace.id}
    assert all(answer.outcome == pb.TURN_OUTCOME_COMPLETED for answer in answers.values())
    [turn_id] = turns_of(events, outside.id)
    deltas = deltas_of(events, turn_id)
    # The chunks stream as they come (deltas a moment apart may be coalesced into one).
    assert "".join(deltas) == "The remote answers in chunks."
    assert len(deltas) > 1
    assert answers[outside.id].text == "The remote answers in chunks."
    stored = {m.turn_id: m.text for m in await world.messages(conversation.id)}
    assert stored[turn_id] == "The remote answers in chunks."

    # The remote was called with a token its own server issued, in the conversation's context,
    # with the user's message and Ada's answer before its turn (as the orchestrator puts the
    # conversation to any agent: in the message to answer or, for earlier turns, its history).
    assert remote.guard.refused == 0
    [message] = remote.executor.received
    assert message.context_id == conversation.id
    assert message.parts[0].text.startswith("What do you all think?")
    history = [entry["text"] for entry in json_format.MessageToDict(message.metadata)[HISTORY_KEY]]
    assert answers[ada.id].text in "\n".join([*history, message.parts[0].text])

    usage = await metered(world, outside.id)
    assert (usage.agent_turns, usage.input_tokens, usage.output_tokens) == (1, 321, 123)
    assert usage.estimated_event_count == 0


async def test_a_remote_that_wins_the_bidding_answers_without_being_asked_to_bid(
    world: World, remote: RemoteAgentServer
) -> None:
    hints = agent_settings_pb2.BiddingHints
    agents = [
        await world.agent("Chef", bidding=hints(keywords=["recipe", "cooking"])),
        await outsider(world, remote, bidding=hints(keywords=["telescope", "orbit", "planet"])),
        await world.agent("Poet", bidding=hints(keywords=["poem", "rhyme"])),
    ]
    conversation = await world.conversation(
        agents,
        conversation_pb.TURN_POLICY_BID,
        limits=conversation_pb.ConversationLimits(max_agent_turns_per_user_message=1),
    )
    events = await round_of(world, conversation.id, "Which planet can my telescope see in this orbit?")

    [results] = [e.bid_results for e in events if e.HasField("bid_results")]
    assert {bid.agent_id for bid in results.bids} == {agent.id for agent in agents}
    assert results.winner_agent_id == agents[1].id
    [turn_id] = turns_of(events, agents[1].id)
    assert "".join(deltas_of(events, turn_id)) == "The remote answers in chunks."
    assert completed(events)[agents[1].id].text == "The remote answers in chunks."
    assert len(remote.executor.received) == 1  # the bid asked nothing of the remote
    assert (await metered(world, agents[1].id)).output_tokens == 123


async def test_a_remote_that_reports_no_usage_is_metered_estimated(
    world: World, remote: RemoteAgentServer
) -> None:
    remote.executor.usage = None
    outside = await outsider(world, remote)
    conversation = await world.conversation([outside])
    events = await round_of(world, conversation.id, "Say something")

    assert completed(events)[outside.id].text == "The remote answers in chunks."
    usage = await metered(world, outside.id)
    assert usage.agent_turns == 1
    assert usage.estimated_event_count == 1
    assert usage.input_tokens > 0
    assert usage.output_tokens == len("The remote answers in chunks.") // 4


async def test_a_failing_remote_opens_its_breaker_and_the_others_still_answer(
    world: World, remote: RemoteAgentServer
) -> None:
    remote.executor.fail = True
    ada, grace = await world.agent("Ada"), await world.agent("Grace")
    outside = await outsider(world, remote)
    # In the middle: the round goes on past the failed turn to the agent after it.
    conversation = await world.conversation([ada, outside, grace])

    for attempt in range(BREAKER_FAILURES + 1):
        events = await round_of(world, conversation.id, f"Attempt {attempt}")
        answers = completed(events)
        assert answers[ada.id].outcome == answers[grace.id].outcome == pb.TURN_OUTCOME_COMPLETED
        [turn_id] = turns_of(events, outside.id)
        assert errors_of(events, turn_id), f"attempt {attempt}: no error event for the remote's turn"
        assert answers[outside.id].outcome == pb.TURN_OUTCOME_FAILED
        assert not deltas_of(events, turn_id)
        turn_order = [e.turn_started.agent_id for e in events if e.HasField("turn_started")]
        assert turn_order == [ada.id, outside.id, grace.id]
        assert events[-1].round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT
    # The breaker opened after BREAKER_FAILURES failures: the last round did not reach the remote.
    assert len(remote.executor.received) == BREAKER_FAILURES
    [error] = errors_of(events, turn_id)
    assert "open circuit breaker" in error.detail.message


async def test_a_remote_that_is_down_fails_its_turn_alone(world: World) -> None:
    port = free_port()
    async with serving_remote_agent(port=port) as server:
        ada = await world.agent("Ada")
        outside = await outsider(world, server)
        conversation = await world.conversation([ada, outside])
    # The server is gone: its card, its token endpoint and its JSON-RPC endpoint refuse connections.
    events = await round_of(world, conversation.id, "Anyone there?")
    [turn_id] = turns_of(events, outside.id)
    [error] = errors_of(events, turn_id)
    assert "remote agent Outsider" in error.detail.message
    assert completed(events)[ada.id].outcome == pb.TURN_OUTCOME_COMPLETED
    # The conversation goes on: the next round's turns are taken again.
    again = await round_of(world, conversation.id, "Still there?")
    assert completed(again)[ada.id].outcome == pb.TURN_OUTCOME_COMPLETED


async def test_a_cancel_during_the_remotes_turn_cancels_its_task(world: World) -> None:
    script = Scripted(chunks=[f"word{i} " for i in range(60)], pace_seconds=0.1)
    async with serving_remote_agent(script) as server:
        outside = await outsider(world, server)
        conversation = await world.conversation([outside])
        requests: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[pb.ConverseRequest]:
            while (request := await requests.get()) is not None:
                yield request

        stream = world.orchestrator.Converse(outgoing(), metadata=world.as_user)
        message = pb.UserMessage(message_id=str(uuid.uuid4()), text="Tell me a long story")
        await requests.put(pb.ConverseRequest(conversation_id=conversation.id, user_message=message))
        seen: list[pb.ConversationEvent] = []
        async with asyncio.timeout(30):
            async for response in stream:
                seen.append(response.event)
                if response.event.HasField("token_delta") and response.event.token_delta.index == 2:
                    await requests.put(
                        pb.ConverseRequest(conversation_id=conversation.id, cancel=pb.Cancel())
                    )
                if response.event.HasField("round_completed"):
                    break
        stream.cancel()
        await requests.put(None)
        async with asyncio.timeout(10):
            await script.cancel_seen.wait()
    [task_id] = script.cancelled
    assert task_id
    assert len(deltas_of(seen, turns_of(seen, outside.id)[0])) < len(script.chunks)


async def test_the_client_secret_is_never_returned(world: World, remote: RemoteAgentServer) -> None:
    created = await outsider(world, remote)
    read = await world.conversations.GetAgent(
        conversation_pb.GetAgentRequest(id=created.id), metadata=bearer(world.conversation_token), timeout=10
    )
    listed = await world.conversations.ListAgents(
        conversation_pb.ListAgentsRequest(page_size=100),
        metadata=bearer(world.conversation_token),
        timeout=10,
    )
    [in_list] = [agent for agent in listed.agents if agent.id == created.id]
    for agent in (created, read.agent, in_list):
        assert agent.remote.client_credentials.client_id == CLIENT_ID
        assert agent.remote.client_credentials.client_secret == ""
        assert CLIENT_SECRET not in str(agent)


@pytest.mark.parametrize(
    ("provider", "with_remote", "field"),
    [("local", True, "remote"), ("a2a", False, "remote")],
)
async def test_a_remote_goes_with_provider_a2a_alone(
    world: World, remote: RemoteAgentServer, provider: str, with_remote: bool, field: str
) -> None:
    fields = {"remote": remote_agent(remote)} if with_remote else {}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.agent("Mixed", provider=provider, model="echo-1", **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


async def test_a_remote_that_trusts_macp_gets_the_callers_token_exchanged_for_it(world: World) -> None:
    """The token exchange mode: no credential of the remote's own; the user's token is exchanged
    at MACP's token service for the remote as audience (RFC 8693), so the remote sees the user as
    the subject and who acts for them, and verifies it with MACP's published keys."""
    async with httpx.AsyncClient(base_url=world.front_url, timeout=10) as http:
        keys = (await http.get("/.well-known/jwks.json")).json()
    port = free_port()
    audience = f"http://127.0.0.1:{port}"
    async with serving_remote_agent(port=port, trusted=TrustedIssuer(keys, audience)) as server:
        outside = await world.agent(
            "Outsider",
            provider="a2a",
            model="outsider",
            remote=conversation_pb.RemoteAgent(
                card_url=server.card_url, auth=conversation_pb.REMOTE_AUTH_TOKEN_EXCHANGE
            ),
        )
        conversation = await world.conversation([outside])
        events = await round_of(world, conversation.id, "Who is asking?")
    assert completed(events)[outside.id].outcome == pb.TURN_OUTCOME_COMPLETED
    assert server.guard.refused == 0
    [claims] = server.guard.trusted_claims
    assert claims["aud"] == audience or audience in claims["aud"]
    # The user is the subject, in the user's tenant.
    assert claims["sub"]
    assert claims["tenant_id"] == world.tenant.tenant_id
    assert claims["act"], "the exchanged token names who acts for the user"
