"""What the attack must leave as it found: the other tenant's ordinary requests, made all through
the attack, all answered as they should and never showed the attacker's data; afterwards every
service reports SERVING, Envoy routes to every cluster, and an ordinary round still completes.
And the catalog itself: every route of the live document and every WebSocket action is attacked."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import grpc
import httpx
import pytest
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.edge.ws.frames import ACTION_FIELDS
from tests.e2e.conftest import _cluster_healthy
from tests.fuzz.campaign import Report
from tests.fuzz.catalog import HTTP_CASES, KNOWN_FAILURES, WS_CASES
from tests.world import SERVICES, World

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# The bystander's calls during the attack: fewer would mean it hardly ran beside it.
MIN_BYSTANDER_CALLS = 100
CLUSTERS = ("token", "conversation", "agent-proxy", "metering", "orchestrator", "edge")


def test_the_other_tenants_requests_all_succeeded(campaign: Report) -> None:
    bystander = campaign.bystander_log
    assert bystander is not None
    assert len(bystander.calls) >= MIN_BYSTANDER_CALLS, Counter(call.label for call in bystander.calls)
    failed = [
        f"{call.label}: {call.status}, not {call.expected}: {call.detail}" for call in bystander.failures
    ]
    assert not failed, "\n".join(failed)


def test_the_other_tenant_saw_none_of_the_attackers_data(campaign: Report) -> None:
    assert campaign.bystander_log is not None
    assert campaign.bystander_log.leaks == []


async def test_every_service_is_serving_afterwards(campaign: Report, fuzz_world: World) -> None:
    ports = {name: int(fuzz_world.environ[f"MACP_{name}_PORT"]) for name, _ in SERVICES}
    ports["TOKEN"] = fuzz_world.tokens.port
    statuses: dict[str, str] = {}
    for name, port in ports.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # set in __init__
            reply = await check(health_pb2.HealthCheckRequest(), timeout=5)
            statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    assert set(statuses.values()) == {"SERVING"}, statuses
    admin = fuzz_world.envoy.ports.admin
    unhealthy = [c for c in CLUSTERS if not await asyncio.to_thread(_cluster_healthy, admin, c)]
    assert unhealthy == []
    async with httpx.AsyncClient(base_url=fuzz_world.front_url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_an_ordinary_round_completes_afterwards(campaign: Report, fuzz_world: World) -> None:
    bystander = campaign.bystander
    url = fuzz_world.front_url.replace("http://", "ws://") + "/v1/ws"
    message_id = str(uuid.uuid4())
    headers = {"authorization": f"Bearer {bystander.token}"}
    async with websockets.connect(url, additional_headers=headers) as ws, asyncio.timeout(30):
        await ws.send(json.dumps({"action": "subscribe", "conversation_id": bystander.conversation}))
        frame = {"action": "message", "conversation_id": bystander.conversation, "text": "still there?"}
        await ws.send(json.dumps({**frame, "message_id": message_id}))
        kinds: list[str] = []
        errors: list[object] = []
        while True:
            answer = json.loads(await ws.recv())
            assert answer["type"] != "error", answer
            if answer["type"] != "event":
                continue
            kinds.append(answer["kind"])
            if answer["kind"] == "error":
                errors.append(answer["event"]["error"])
            completed = answer["event"].get("round_completed")
            if completed and completed["trigger_message_id"] == message_id:
                break
    assert "turn_completed" in kinds, (kinds, errors)


async def test_every_route_and_action_is_attacked(fuzz_world: World) -> None:
    async with httpx.AsyncClient(base_url=fuzz_world.front_url, timeout=10) as client:
        document = (await client.get("/v1/openapi.json")).json()
    served = {f"{method.upper()} {path}" for path, methods in document["paths"].items() for method in methods}
    attacked = {case.route for case in HTTP_CASES}
    assert served - attacked == set()
    assert {
        "POST /oauth2/token",
        "POST /oauth2/register",
        "POST /oauth2/introspect",
        "POST /oauth2/revoke",
    } <= attacked
    assert {case.action for case in WS_CASES} - {"frame", "handshake"} == set(ACTION_FIELDS)


def test_every_known_failure_names_a_case() -> None:
    # A mark on a renamed case would mark nothing, and the failure it names would go unseen.
    ids = {case.id for case in HTTP_CASES} | {case.id for case in WS_CASES}
    assert set(KNOWN_FAILURES) - ids == set()
