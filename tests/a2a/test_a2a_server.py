"""Every agent is an A2A agent at the edge, driven by the official `a2a-sdk` client through Envoy's
front listener: its card, a streamed message whose round runs on the real mesh, a second client
subscribing mid-stream, cancel, tenancy, and usage that matches metering's."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from a2a.types import a2a_pb2 as a2a
from a2a.utils.errors import A2AError, TaskNotCancelableError
from google.protobuf.timestamp_pb2 import Timestamp
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc

from services.runtime.a2a_usage import USAGE_EXTENSION_URI
from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from tests.a2a.a2a_clients import a2a_client, streamed_text, usage_of, user_message
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    return await module_world.other_tenant()


def _model() -> str:
    """A model of this test's own, so behaviors booked for it reach no other test's agents."""
    return f"echo-{uuid.uuid4().hex[:8]}"


async def _metered(world: World, agent_id: str) -> metering_pb.UsageTotals:
    metering = metering_grpc.MeteringServiceStub(world.channel)
    token = await world.tokens.user_token(world.tenant, [service_audience("metering")])
    now = int(time.time())
    usage = await metering.GetUsage(
        metering_pb.GetUsageRequest(
            tenant_id=world.tenant.tenant_id,
            period=metering_pb.Period(
                start_time=Timestamp(seconds=now - 3600), end_time=Timestamp(seconds=now + 3600)
            ),
            group_by=metering_pb.GROUP_BY_AGENT,
        ),
        metadata=bearer(token),
        timeout=10,
    )
    return next(group.totals for group in usage.groups if group.key == agent_id)


async def test_a_streamed_message_is_answered_and_its_usage_is_metering_s(world: World) -> None:
    ada = await world.agent("Ada", capabilities=["finance.tax", "code"])
    async with a2a_client(world.front_url, ada.id, world.edge_token) as (card, client):
        assert card.name == "Ada"
        assert [skill.id for skill in card.skills] == ["finance.tax", "code"]
        assert card.capabilities.streaming
        assert not card.capabilities.push_notifications
        assert [extension.uri for extension in card.capabilities.extensions] == [USAGE_EXTENSION_URI]
        assert card.supported_interfaces[0].url == f"{world.front_url}/a2a/agents/{ada.id}"
        assert card.supported_interfaces[0].protocol_version == "1.0"
        flows = card.security_schemes["macp_oauth2"].oauth2_security_scheme.flows
        assert flows.client_credentials.token_url.endswith("/oauth2/token")
        request = user_message("hello agent", str(uuid.uuid4()))
        events = [event async for event in client.send_message(request)]
    assert events[0].HasField("task")
    task = events[0].task
    assert task.status.state == a2a.TASK_STATE_SUBMITTED
    assert [e.status_update.status.state for e in events if e.HasField("status_update")] == [
        a2a.TASK_STATE_WORKING,
        a2a.TASK_STATE_COMPLETED,
    ]
    text = streamed_text(events)
    stored = [m for m in await world.messages(task.context_id) if m.turn_id]
    assert len(stored) == 1
    assert stored[0].text == text[stored[0].turn_id]
    assert text[stored[0].turn_id]
    last_chunks = [e.artifact_update for e in events if e.artifact_update.last_chunk]
    assert [chunk.artifact.artifact_id for chunk in last_chunks] == [stored[0].turn_id]
    assert last_chunks[0].artifact.name == "Ada"
    assert last_chunks[0].artifact.metadata["messageId"] == stored[0].id
    usage = usage_of(events[-1].status_update.metadata)
    metered = await _metered(world, ada.id)
    assert usage["agentTurns"] == metered.agent_turns == 1
    assert usage["orchestrations"] == 1
    assert usage["inputTokens"] == metered.input_tokens > 0
    assert usage["outputTokens"] == metered.output_tokens > 0
    [agent_usage] = usage["agents"]
    assert agent_usage["agentId"] == ada.id
    assert agent_usage["model"] == ada.model
    assert not usage["estimated"]


async def test_a_second_client_subscribing_mid_stream_misses_nothing(world: World) -> None:
    model = _model()
    ada = await world.agent("Ada", model=model)
    world.book("tokens=60,pace=0.04", times=1, model=model)
    async with (
        a2a_client(world.front_url, ada.id, world.edge_token) as (_card, sender),
        a2a_client(world.front_url, ada.id, world.edge_token) as (_card, subscriber),
    ):
        stream = sender.send_message(user_message("tell me a long story", str(uuid.uuid4())))
        first = await anext(stream)
        task_id = first.task.id
        sent: list[Any] = [first]
        # The sender reads on while the second client joins half way through the answer.
        while sum(e.HasField("artifact_update") for e in sent) < 15:
            sent.append(await anext(stream))
        subscription = [e async for e in subscriber.subscribe(a2a.SubscribeToTaskRequest(id=task_id))]
        sent += [e async for e in stream]
    # The subscription opens with the task as it stood (its artifact so far), then every later event.
    assert subscription[0].HasField("task")
    joined = subscription[0].task
    assert joined.status.state == a2a.TASK_STATE_WORKING
    [artifact] = joined.artifacts
    before = "".join(part.text for part in artifact.parts)
    assert before, "the subscriber joined before any of the answer"
    after = streamed_text(subscription[1:])
    stored = [m for m in await world.messages(joined.context_id) if m.turn_id]
    assert len(stored) == 1
    assert (
        before + after.get(artifact.artifact_id, "")
        == stored[0].text
        == streamed_text(sent)[artifact.artifact_id]
    )
    assert subscription[-1].status_update.status.state == a2a.TASK_STATE_COMPLETED


async def test_cancel_task_cancels_the_round(world: World) -> None:
    model = _model()
    ada = await world.agent("Ada", model=model)
    world.book("tokens=400,pace=0.05", times=1, model=model)
    async with a2a_client(world.front_url, ada.id, world.edge_token) as (_card, client):
        stream = client.send_message(user_message("a very long answer, please", str(uuid.uuid4())))
        events = [await anext(stream)]
        task_id = events[0].task.id
        while not any(e.HasField("artifact_update") for e in events):
            events.append(await anext(stream))
        cancelled = await client.cancel_task(a2a.CancelTaskRequest(id=task_id))
        assert cancelled.status.state == a2a.TASK_STATE_CANCELED
        async with asyncio.timeout(10):
            events += [e async for e in stream]
        assert events[-1].status_update.status.state == a2a.TASK_STATE_CANCELED
        fetched = await client.get_task(a2a.GetTaskRequest(id=task_id))
        assert fetched.status.state == a2a.TASK_STATE_CANCELED
        with pytest.raises(TaskNotCancelableError, match="ended"):
            await client.cancel_task(a2a.CancelTaskRequest(id=task_id))
    assert await world.open_holds() == []


async def test_another_tenant_finds_neither_the_agent_nor_its_tasks(world: World) -> None:
    ada = await world.agent("Ada")
    async with a2a_client(world.front_url, ada.id, world.edge_token) as (_card, client):
        reply = [e async for e in client.send_message(user_message("mine", str(uuid.uuid4())))]
    task_id = reply[0].task.id
    stranger = await world.other_tenant()
    headers = {"authorization": f"Bearer {stranger.edge_token}", "a2a-version": "1.0"}
    async with httpx.AsyncClient(base_url=world.front_url, headers=headers, timeout=30) as http:
        card = await http.get(f"/a2a/agents/{ada.id}/.well-known/agent-card.json")
        assert card.status_code == 404, card.text
        rpc = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": task_id}}
        answer = await http.post(f"/a2a/agents/{ada.id}", json=rpc)
        assert answer.status_code == 404, answer.text
        assert ada.name not in card.text + answer.text
        # Its own agent does not find the task either.
        bea = await stranger.agent("Bea")
        answer = await http.post(f"/a2a/agents/{bea.id}", json=rpc)
        assert answer.status_code == 200
        assert answer.json()["error"]["code"] == -32001  # TaskNotFoundError
    async with httpx.AsyncClient(base_url=world.front_url, timeout=30) as http:
        anonymous = await http.get(f"/a2a/agents/{ada.id}/.well-known/agent-card.json")
        assert anonymous.status_code == 401


async def test_blocking_and_immediate_sends_get_and_list_tasks(world: World) -> None:
    ada = await world.agent("Ada")
    bea = await world.agent("Bea")
    both = await world.conversation(
        [ada, bea], limits=conversation_pb.ConversationLimits(max_agent_turns_per_user_message=2)
    )
    async with a2a_client(world.front_url, ada.id, world.edge_token, streaming=False) as (_card, client):
        blocking = user_message("to you both", str(uuid.uuid4()), context_id=both.id)
        done = await anext(client.send_message(blocking))
        assert done.task.status.state == a2a.TASK_STATE_COMPLETED
        assert {artifact.name for artifact in done.task.artifacts} == {"Ada", "Bea"}
        stored = {m.turn_id: m.text for m in await world.messages(both.id) if m.turn_id}
        assert {a.artifact_id: a.parts[0].text for a in done.task.artifacts} == stored
        assert done.task.history[0].parts[0].text == "to you both"
        immediate = user_message("again", str(uuid.uuid4()), context_id=both.id)
        immediate.configuration.return_immediately = True
        submitted = await anext(client.send_message(immediate))
        assert submitted.task.status.state in (a2a.TASK_STATE_SUBMITTED, a2a.TASK_STATE_WORKING)
        async with asyncio.timeout(30):
            # As a polling client does (it was told not to wait), GetTask until the task is done.
            while (  # noqa: ASYNC110
                task := await client.get_task(a2a.GetTaskRequest(id=submitted.task.id))
            ).status.state not in (a2a.TASK_STATE_COMPLETED,):
                await asyncio.sleep(0.2)
        assert len(task.artifacts) == 2
        # The same message again is the same task: PostMessage is idempotent by its id.
        again = await anext(client.send_message(blocking))
        assert again.task.id == done.task.id
        listed = await client.list_tasks(a2a.ListTasksRequest(context_id=both.id, page_size=1))
        assert [t.id for t in listed.tasks] == [submitted.task.id]
        assert listed.total_size == 2
        assert listed.next_page_token
        rest = await client.list_tasks(
            a2a.ListTasksRequest(context_id=both.id, page_size=1, page_token=listed.next_page_token)
        )
        assert [t.id for t in rest.tasks] == [done.task.id]
        assert not rest.next_page_token
        completed = await client.list_tasks(a2a.ListTasksRequest(status=a2a.TASK_STATE_COMPLETED))
        assert {t.id for t in completed.tasks} == {done.task.id, submitted.task.id}
        assert not any(t.artifacts for t in completed.tasks)  # include_artifacts defaults to false


async def test_a_tenant_without_turns_gets_a_rejected_task(world: World) -> None:
    broke = await world.tenant_without_turns()
    ada = await broke.agent("Ada")
    async with a2a_client(world.front_url, ada.id, broke.edge_token) as (_card, client):
        events = [e async for e in client.send_message(user_message("hello", str(uuid.uuid4())))]
    final = events[-1].task if events[-1].HasField("task") else None
    state = final.status if final is not None else events[-1].status_update.status
    assert state.state == a2a.TASK_STATE_REJECTED
    assert "QUOTA_EXCEEDED" in state.message.parts[0].text


@pytest.mark.parametrize(
    ("params", "code", "names"),
    [
        (
            {
                "message": {
                    "messageId": "m1",
                    "role": "ROLE_USER",
                    "parts": [{"url": "https://x.example/a.png"}],
                }
            },
            -32005,
            "message.parts[0]",
        ),
        (
            {"message": {"messageId": "m1", "role": "ROLE_AGENT", "parts": [{"text": "hi"}]}},
            -32602,
            "message.role",
        ),
        (
            {
                "message": {
                    "messageId": "m1",
                    "role": "ROLE_USER",
                    "parts": [{"text": "hi"}],
                    "contextId": "nope",
                }
            },
            -32602,
            "message.contextId",
        ),
        (
            {
                "message": {
                    "messageId": "m1",
                    "role": "ROLE_USER",
                    "parts": [{"text": "hi"}],
                    "taskId": "unknown",
                }
            },
            -32001,
            "message.taskId",
        ),
        ({"message": {"role": "ROLE_USER", "parts": [{"text": "hi"}]}}, -32602, "messageId"),
    ],
)
async def test_bad_messages_are_refused_naming_the_field(
    world: World, params: dict[str, Any], code: int, names: str
) -> None:
    ada = await world.agent("Ada")
    headers = {"authorization": f"Bearer {world.edge_token}", "a2a-version": "1.0"}
    async with httpx.AsyncClient(base_url=world.front_url, headers=headers, timeout=30) as http:
        answer = await http.post(
            f"/a2a/agents/{ada.id}",
            json={"jsonrpc": "2.0", "id": 7, "method": "SendMessage", "params": params},
        )
    assert answer.status_code == 200, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    assert names in str(error), error


async def test_a_stream_ends_when_its_token_is_revoked(world: World) -> None:
    model = _model()
    ada = await world.agent("Ada", model=model)
    world.book("tokens=400,pace=0.05", times=1, model=model)
    token = await world.tokens.user_token(world.tenant, [EDGE_AUDIENCE])
    async with a2a_client(world.front_url, ada.id, token) as (_card, client):
        stream = client.send_message(user_message("a long answer", str(uuid.uuid4())))
        events = [await anext(stream)]
        while not any(e.HasField("artifact_update") for e in events):
            events.append(await anext(stream))
        await world.tokens.revoke(world.tenant, token)

        async def rest_of_stream() -> None:
            async with asyncio.timeout(10):
                async for event in stream:
                    events.append(event)

        with pytest.raises(A2AError, match="revoked"):
            await rest_of_stream()
    # Within the revocation cache window and one sweep, not at the end of the 20 s answer.
    assert sum(e.HasField("artifact_update") for e in events) < 200
    # The round itself goes on (the token only ended the stream); a valid token stops it.
    async with a2a_client(world.front_url, ada.id, world.edge_token) as (_card, client):
        cancelled = await client.cancel_task(a2a.CancelTaskRequest(id=events[0].task.id))
    assert cancelled.status.state == a2a.TASK_STATE_CANCELED
