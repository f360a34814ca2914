"""One WebSocket turn, one trace: a real client through Envoy's front listener sends a message, and
every span the mesh made for it (the edge's action, the orchestrator's action and round, the agent
proxy's Generate, metering's holds and their commit, the conversation service's writes) shares the
trace the `ack` names, connected from one root. A chat completion's trace goes one hop further:
the agent proxy's usage event, through its outbox and Kafka, to metering's consumer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.runtime import tracing
from tests.e2e.test_websocket_rounds import frames_until_round_end, ws_url
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


SERVICES = {"edge", "orchestrator", "agent-proxy", "metering", "conversation"}


def service(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get(tracing.SERVICE_ATTRIBUTE))


async def ack_of(ws: Any, message_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == "ack" and frame.get("message_id") == message_id:
                return frame


async def spans_of(
    exporter: InMemorySpanExporter, trace_id: int, last: Callable[[ReadableSpan], bool]
) -> list[ReadableSpan]:
    """The trace's finished spans, once the `last` of them has ended."""
    async with asyncio.timeout(15):
        while True:
            spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
            if any(last(s) for s in spans):
                return spans
            await asyncio.sleep(0.1)


def round_ended(span: ReadableSpan) -> bool:
    return span.name == "round"


def consumed(span: ReadableSpan) -> bool:
    """Metering's consumer made a usage event durable (after the agent proxy's outbox and Kafka)."""
    return span.kind == SpanKind.CONSUMER


async def test_one_websocket_turn_is_one_connected_trace_through_every_service(world: World) -> None:
    with tracing.collecting() as exporter:
        conversation = await world.conversation([await world.agent("Ada")])
        message_id = str(uuid.uuid4())
        async with websockets.connect(ws_url(world)) as ws:
            await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation.id}))
            await ws.send(
                json.dumps(
                    {
                        "action": "message",
                        "conversation_id": conversation.id,
                        "message_id": message_id,
                        "text": "Trace me",
                    }
                )
            )
            ack = await ack_of(ws, message_id)
            await frames_until_round_end(ws, message_id, seconds=30)
        trace_id = int(ack["traceparent"].split("-")[1], 16)
        spans = await spans_of(exporter, trace_id, round_ended)
        subscribe = [s for s in exporter.get_finished_spans() if s.name == "WS subscribe"]

    ids = {s.context.span_id for s in spans}
    roots = [s for s in spans if s.parent is None]
    assert [(r.name, service(r)) for r in roots] == [("WS message", "edge")]
    orphans = [(s.name, service(s)) for s in spans if s.parent is not None and s.parent.span_id not in ids]
    assert orphans == [], "spans whose parent is not in the trace"
    # (The token service is there too when a call needed a token exchanged for its callee.)
    assert {service(s) for s in spans} >= SERVICES
    # A trace per action: the subscribe before it is a trace of its own.
    assert [s.context.trace_id for s in subscribe] != [trace_id]

    by_id = {s.context.span_id: s for s in spans}

    def served(name: str, by: str) -> list[ReadableSpan]:
        return [s for s in spans if s.kind == SpanKind.SERVER and s.name.endswith(name) and service(s) == by]

    assert served("Converse user_message", "orchestrator")
    assert served("AgentProxyService/Generate", "agent-proxy")
    assert served("ConversationService/AppendMessage", "conversation")
    # A one-turn round takes its holds in one call and settles them in one (its last turn's).
    assert served("MeteringService/ReserveHolds", "metering")
    assert served("MeteringService/CommitHolds", "metering")
    [round_span] = [s for s in spans if s.name == "round"]
    generate = served("AgentProxyService/Generate", "agent-proxy")[0]
    ancestors = []
    cursor: ReadableSpan | None = generate
    while cursor is not None and cursor.parent is not None:
        cursor = by_id.get(cursor.parent.span_id)
        ancestors.append(cursor)
    assert round_span in ancestors, "the agent's Generate is not inside the round"
    # A turn of a round is billed by the round's own Commit, not by a usage event of the agent
    # proxy's (services/agent_proxy/usage.py): no agent turn goes through Kafka.
    assert not [s for s in spans if (s.attributes or {}).get("macp.usage.type") == "macp.usage.v1.agent_turn"]


async def test_a_chat_completion_is_one_trace_through_kafka_to_metering(world: World) -> None:
    ada = await world.agent("Ada")
    with tracing.collecting() as exporter:
        async with httpx.AsyncClient(base_url=world.front_url, timeout=30) as client:
            answer = await client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {world.edge_token}"},
                json={"model": ada.id, "messages": [{"role": "user", "content": "trace me"}]},
            )
        assert answer.status_code == 200, answer.text
        # The request's own trace: Envoy's health checks and the edge's background calls (a JWKS
        # refresh) start others.
        [root] = [
            s
            for s in exporter.get_finished_spans()
            if s.parent is None and service(s) == "edge" and s.name == "POST /v1/chat/completions"
        ]
        spans = await spans_of(exporter, root.context.trace_id, consumed)
    by_id = {s.context.span_id: s for s in spans}
    # Metering continues the completion's usage event from its Kafka headers.
    consumers = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert {service(s) for s in consumers} == {"metering"}
    producers = {by_id[s.parent.span_id].kind for s in consumers if s.parent is not None}
    assert producers == {SpanKind.PRODUCER}
    turn_events = [
        s
        for s in spans
        if s.kind == SpanKind.PRODUCER
        and (s.attributes or {}).get("macp.usage.type") == "macp.usage.v1.agent_turn"
    ]
    assert [service(s) for s in turn_events] == ["agent-proxy"]
    assert any(s.parent is not None and s.parent.span_id == turn_events[0].context.span_id for s in consumers)
