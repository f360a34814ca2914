"""The Python client (clients/python) against the whole mesh through Envoy's front listener: REST
with etags, refusals as typed errors naming their field, OAuth grants with the token kept fresh
(a refresh, a revoked token renewed once however many requests saw it fail), SSE and its replay,
and the blocking client doing the same as the async one. One mesh for the module; each test is a
tenant of its own on it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from macp.common.v1 import principal_pb2
from macp_client import AsyncMacpClient, ClientCredentials, Event, MacpClient, MacpError, Password
from macp_client.types import AgentDraft

from services.runtime.auth.settings import USER_SCOPES
from tests.token.harness import RegisteredClient
from tests.tokens import PASSWORD
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    return await module_world.other_tenant()


@pytest.fixture
async def client(world: World) -> AsyncIterator[AsyncMacpClient]:
    async with AsyncMacpClient(world.front_url, token=world.edge_token, trust_env=False) as opened:
        yield opened


def draft(name: str, model: str = "echo-1") -> AgentDraft:
    return {"name": name, "provider": "local", "model": model}


def texts(events: list[Event]) -> dict[str, str]:
    """Each turn's streamed text, checking that its deltas come in order, none missing or twice."""
    pieces: dict[str, list[str]] = {}
    for event in events:
        if (delta := event.token_delta) is not None:
            turn = pieces.setdefault(delta["turn_id"], [])
            assert delta["index"] == len(turn)
            turn.append(delta["text"])
    return {turn: "".join(parts) for turn, parts in pieces.items()}


async def test_agents_and_conversations_round_trip_with_etags(client: AsyncMacpClient) -> None:
    ada = await client.create_agent({**draft("Ada"), "bidding": {"keywords": ["math"]}})
    grace = await client.create_agent(draft("Grace"))
    assert await client.get_agent(ada["id"]) == ada
    assert ada["bidding"]["keywords"] == ["math"]

    renamed = await client.update_agent(ada["id"], {"name": "Ada L."}, ada["etag"])
    assert renamed["name"] == "Ada L."
    assert renamed["etag"] != ada["etag"]
    with pytest.raises(MacpError) as stale:
        await client.update_agent(ada["id"], {"name": "Lost update"}, ada["etag"])
    assert (stale.value.status, stale.value.code) == (412, "FAILED_PRECONDITION")

    first = await client.list_agents(page_size=1)
    assert [agent["id"] for agent in first.items] == [ada["id"]]
    second = await client.list_agents(page_size=1, page_token=first.next_page_token)
    assert [agent["id"] for agent in second.items] == [grace["id"]]
    assert second.next_page_token == ""

    conversation = await client.create_conversation(
        {"title": "Pair", "participantAgentIds": [ada["id"], grace["id"]], "turnPolicy": "TURN_POLICY_BID"}
    )
    assert conversation["status"] == "CONVERSATION_STATUS_ACTIVE"
    retitled = await client.update_conversation(conversation["id"], {"title": "Duo"}, conversation["etag"])
    assert (await client.get_conversation(conversation["id"]))["title"] == "Duo"
    listed = await client.list_conversations(agent_id=grace["id"])
    assert [found["id"] for found in listed.items] == [conversation["id"]]

    await client.delete_conversation(conversation["id"], retitled["etag"])
    await client.delete_agent(grace["id"])
    with pytest.raises(MacpError) as gone:
        await client.get_agent(grace["id"])
    assert (gone.value.status, gone.value.code) == (404, "NOT_FOUND")


async def test_a_refusal_is_a_typed_error_naming_its_field(world: World, client: AsyncMacpClient) -> None:
    with pytest.raises(MacpError) as missing:
        await client.create_agent(draft("Nameless", model=""))
    assert (missing.value.status, missing.value.code, missing.value.field) == (
        400,
        "INVALID_ARGUMENT",
        "model",
    )
    assert missing.value.request_id

    agent = await client.create_agent(draft("Ada"))
    with pytest.raises(MacpError) as unconditional:
        await client.request("PATCH", f"/v1/agents/{agent['id']}", json={"name": "Blind"})
    assert (unconditional.value.status, unconditional.value.field) == (428, "If-Match")

    async with AsyncMacpClient(world.front_url, token="not-a-token", trust_env=False) as stranger:
        with pytest.raises(MacpError) as refused:
            await stranger.list_agents()
    assert (refused.value.status, refused.value.code) == (401, "UNAUTHENTICATED")


async def test_a_message_its_sse_round_its_replay_archives_and_usage(
    world: World, client: AsyncMacpClient
) -> None:
    agent = await client.create_agent(draft("Ada"))
    conversation = await client.create_conversation(
        {"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_ROUND_ROBIN"}
    )
    message_id = str(uuid.uuid4())
    streamed = [
        event async for event in client.stream_message(conversation["id"], "Hi", message_id=message_id)
    ]
    accepted = streamed[0].message_accepted
    assert accepted is not None
    assert accepted["message_id"] == message_id
    assert streamed[-1].ends_round_of(message_id)
    assert {event.conversation_id for event in streamed} == {conversation["id"]}

    # The same message again is the same message: answered as a duplicate, no second round.
    again = await client.post_message(conversation["id"], "Hi", message_id=message_id)
    assert again["duplicate"]
    assert again["eventId"] == streamed[0].event_id

    # The replay after the first event is the rest of what was streamed, event for event.
    replayed: list[Event] = []
    async with asyncio.timeout(20):
        async for event in client.stream_events(conversation["id"], after=streamed[0].event_id):
            replayed.append(event)
            if event.ends_round_of(message_id):
                break
    assert [event.event_id for event in replayed] == [event.event_id for event in streamed[1:]]

    messages = (await client.list_messages(conversation["id"])).items
    assert [m["role"] for m in messages] == ["MESSAGE_ROLE_USER", "MESSAGE_ROLE_AGENT"]
    assert texts(streamed) == {m["turnId"]: m["text"] for m in messages if m["turnId"]}
    assert (await client.list_messages(conversation["id"], newest_first=True)).items == messages[::-1]

    archived = await client.archive_conversation(conversation["id"], url_ttl_seconds=120)
    assert archived["archive"]["messageCount"] == "2"
    link = await client.get_archive(conversation["id"], archived["archive"]["id"], url_ttl_seconds=60)
    assert link["presignedUrl"].startswith("http")
    listed = await client.list_archives(conversation["id"])
    assert [archive["id"] for archive in listed.items] == [archived["archive"]["id"]]

    # Metering counts the turn once its event is consumed from Kafka: a moment after the round.
    async with asyncio.timeout(20):
        while True:
            usage = await client.usage(group_by="agent")
            if "totals" in usage and usage["totals"]["agentTurns"] == "1":
                break
            await asyncio.sleep(0.2)
    by_agent = {group["key"]: group["totals"]["agentTurns"] for group in usage["groups"]}
    assert by_agent[agent["id"]] == "1"  # the round's orchestration is counted under no agent ("")
    assert (await client.invoice_preview())["currency"] == "USD"


async def app_of(world: World) -> RegisteredClient:
    """A confidential client of the world's tenant allowed the password and refresh token grants."""
    return await world.tokens.harness.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        grant_types=("password", "refresh_token"),
        scope=" ".join(USER_SCOPES),
        tenant_id=world.tenant.tenant_id,
        name="python client app",
    )


async def test_the_password_grant_refreshes_and_renews_a_revoked_token_once(world: World) -> None:
    app = await app_of(world)
    grant = Password(world.tenant.username, PASSWORD, app.client_id, app.client_secret)
    async with AsyncMacpClient(world.front_url, grant=grant, trust_env=False) as client:
        await client.list_agents()  # signs in on first use
        signed_in = await client.access_token()
        assert signed_in is not None
        await client.refresh()  # with the refresh token the sign-in gave
        refreshed = await client.access_token()
        assert refreshed not in (None, signed_in)
        assert client.renewals == 1

        looked_at = await client.introspect(refreshed or "", app.client_id, app.client_secret)
        assert looked_at["active"]
        assert looked_at["username"] == world.tenant.username

        # Revoked, the token is refused by every request in flight; the client renews it once
        # (a refresh token is single-use: a second use would revoke the whole family).
        await client.revoke(refreshed or "", app.client_id, app.client_secret)
        await asyncio.gather(*(client.list_agents() for _ in range(5)))
        assert client.renewals == 2
        assert (await client.introspect(refreshed or "", app.client_id, app.client_secret)) == {
            "active": False
        }
        assert (await client.access_token()) not in (signed_in, refreshed)


async def test_a_websocket_closed_for_a_revoked_token_renews_it_and_resumes(world: World) -> None:
    app = await app_of(world)
    grant = Password(world.tenant.username, PASSWORD, app.client_id, app.client_secret)
    async with AsyncMacpClient(world.front_url, grant=grant, trust_env=False) as client:
        agent = await client.create_agent(draft("Ada"))
        conversation = await client.create_conversation(
            {"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_ROUND_ROBIN"}
        )
        async with client.websocket() as socket:
            first = [event async for event in socket.round(conversation["id"], "One")]
            # The edge closes a connection whose token is revoked (4401, within about 1.25 s):
            # the socket renews the token with its refresh token, connects again and resumes.
            await client.revoke(await client.access_token() or "", app.client_id, app.client_secret)
            for _ in range(100):
                if socket.reconnects:
                    break
                await asyncio.sleep(0.1)
            assert socket.reconnects == 1, "the edge did not close the connection of a revoked token"
            second = [event async for event in socket.round(conversation["id"], "Two")]
            assert socket.repeats == 0
        assert client.renewals == 1
    ids = [event.event_id for event in first + second]
    assert len(ids) == len(set(ids))
    assert [event.kind for event in second][-1] == "round_completed"


async def test_the_client_credentials_grant_and_a_refused_one(world: World) -> None:
    service = await world.tokens.harness.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        grant_types=("client_credentials",),
        scope="conversations:read",
        tenant_id=world.tenant.tenant_id,
        name="python client service",
    )
    async with AsyncMacpClient(world.front_url, trust_env=False) as client:
        issued = await client.sign_in(ClientCredentials(service.client_id, service.client_secret))
        assert issued["token_type"] == "Bearer"
        assert "refresh_token" not in issued
        looked_at = await client.introspect(issued["access_token"], service.client_id, service.client_secret)
        assert looked_at["client_id"] == service.client_id

        with pytest.raises(MacpError) as refused:
            await client.sign_in(ClientCredentials(service.client_id, "wrong secret"))
    assert (refused.value.status, refused.value.code) == (401, "invalid_client")


def _blocking_round(front_url: str, token: str) -> tuple[list[Event], list[Event], MacpError]:
    """What a script without an event loop does: the same calls, without await."""
    with MacpClient(front_url, token=token, trust_env=False) as client:
        agent = client.create_agent(draft("Ada"))
        conversation = client.create_conversation(
            {"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_ROUND_ROBIN"}
        )
        with client.websocket() as socket:
            over_websocket = list(socket.round(conversation["id"], "Over the socket"))
        over_sse = list(client.stream_message(conversation["id"], "Over SSE"))
        try:
            client.get_agent(str(uuid.uuid4()))
        except MacpError as error:
            return over_websocket, over_sse, error
    raise AssertionError("an unknown agent was found")


async def test_the_blocking_client_does_what_the_async_one_does(world: World) -> None:
    over_websocket, over_sse, unknown = await asyncio.to_thread(
        _blocking_round, world.front_url, world.edge_token
    )
    for events in (over_websocket, over_sse):
        kinds = [event.kind for event in events]
        assert kinds[0] == "message_accepted"
        assert kinds[-1] == "round_completed"
        assert "token_delta" in kinds
        assert len(texts(events)) == 1
    assert (unknown.status, unknown.code) == (404, "NOT_FOUND")
