"""The audit log across the whole mesh (tests/world.py: every service, the edge, Envoy): agent and
conversation writes through the edge, an archive, a plan change and a quota refusal each audited
exactly once with the caller's subject, actor chain, client and request id; a rolled-back write
and repeated deletes and refusals add nothing; `GET /v1/audit` shows a tenant's admin that
tenant's rows only (paged, filtered), refuses a non-admin with 403, and `macp audit` renders it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from macp.common.v1 import principal_pb2
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.token.v1 import token_service_pb2 as token_pb

from services.cli.audit import audit_url, render_audit
from services.cli.main import build_parser
from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from tests.audit.helpers import Row, admin_user, new_agent_token, of, rows, signed_in
from tests.token.harness import ACCESS_TOKEN_TYPE, EXCHANGE_GRANT, unverified
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration

METERING_AUDIENCE = service_audience("metering")
AGENT = {"name": "Ada", "provider": "local", "model": "echo-1"}


def ok(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, f"{response.request.method} {response.url}: {response.text}"
    return response.json() if response.content else None


def quoted(etag: str) -> dict[str, str]:
    return {"if-match": f'"{etag}"'}


@pytest.fixture
async def db(world: World) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(world.environ["MACP_DATABASE_URL"], min_size=1, max_size=2) as pool:
        yield pool


async def _metering_as_agent(world: World, agent_id_token: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """An internal service's token for metering: the tenant user's, exchanged with an agent acting
    (as the orchestrator holds while it runs a turn); returns the exchanging client's id too."""
    harness = world.tokens.harness
    exchanger = await harness.register(grant_types=[EXCHANGE_GRANT], scope="usage:write")
    exchanged: token_pb.ExchangeTokenResponse = await harness.stub.ExchangeToken(
        token_pb.ExchangeTokenRequest(
            client_id=exchanger.client_id,
            client_secret=exchanger.client_secret,
            subject_token=world.edge_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
            actor_token=agent_id_token,
            actor_token_type=ACCESS_TOKEN_TYPE,
            audience=[METERING_AUDIENCE],
            scope="usage:write",
        )
    )
    return exchanger.client_id, bearer(exchanged.access_token)


async def test_mesh_actions_are_audited_once_and_read_per_tenant(world: World, db: asyncpg.Pool) -> None:
    tenant = world.tenant.tenant_id
    user_id = unverified(world.edge_token)[1]["sub"]
    async with httpx.AsyncClient(
        base_url=world.front_url, timeout=10, headers={"authorization": f"Bearer {world.edge_token}"}
    ) as client:
        created = await client.post("/v1/agents", json=AGENT)
        ada = ok(created, 201)
        bea = ok(await client.post("/v1/agents", json={**AGENT, "name": "Bea"}), 201)
        ada = ok(
            await client.patch(
                f"/v1/agents/{ada['id']}", json={"systemPrompt": "Brief."}, headers=quoted(ada["etag"])
            ),
            200,
        )
        # Refused inside its transaction (no such agent): rolled back, so not audited.
        refused = await client.post(
            "/v1/conversations",
            json={
                "title": "x",
                "participantAgentIds": [str(uuid.uuid4())],
                "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
            },
        )
        assert refused.status_code == 409, refused.text
        draft = {"title": "plan", "participantAgentIds": [ada["id"]], "turnPolicy": "TURN_POLICY_ROUND_ROBIN"}
        conversation = ok(await client.post("/v1/conversations", json=draft), 201)
        conversation = ok(
            await client.patch(
                f"/v1/conversations/{conversation['id']}",
                json={"title": "renamed", "etag": conversation["etag"]},
            ),
            200,
        )
        archived = ok(
            await client.post(f"/v1/conversations/{conversation['id']}/archive", json={"close": True}), 201
        )
        closed = archived["conversation"]
        for status in (204, 404):  # the second delete finds nothing: nothing written, nothing audited
            ok(
                await client.delete(
                    f"/v1/conversations/{conversation['id']}", headers=quoted(closed["etag"])
                ),
                status,
            )
            ok(await client.delete(f"/v1/agents/{bea['id']}", headers=quoted(bea["etag"])), status)

    # A plan change by an administrator of the system tenant: audited in the tenant whose plan it is.
    harness = world.tokens.harness
    admin = await harness.register(scope="macp:admin")
    admin_token = await harness.client_token(admin, "macp:admin", [METERING_AUDIENCE])
    metering = metering_grpc.MeteringServiceStub(world.channel)
    await metering.SetPlan(
        metering_pb.SetPlanRequest(tenant_id=tenant, tier=principal_pb2.TIER_FREE),
        metadata=bearer(admin_token.access_token),
        timeout=10,
    )
    # A hold past the free tier's hard limit, asked twice for one reservation: one refusal row,
    # naming the agent that acted for the user.
    _, agent_id, agent_token = await new_agent_token(world.tokens, world.tenant, user_id, scope="usage:write")
    exchanger_id, as_agent = await _metering_as_agent(world, agent_token)
    hold = metering_pb.ReserveRequest(
        reservation_id=str(uuid.uuid4()), tenant_id=tenant, meter=metering_pb.METER_AGENT_TURNS, quantity=101
    )
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await metering.Reserve(hold, metadata=as_agent, timeout=10)
        assert refusal.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    found = await rows(db, tenant)
    counts = {action: len(of(found, action)) for action in {r.action for r in found}}
    assert {
        k: v for k, v in counts.items() if not k.startswith(("token.", "client.", "tenant.", "user."))
    } == {
        "agent.create": 2,
        "agent.update": 1,
        "agent.delete": 1,
        "conversation.create": 1,
        "conversation.update": 1,
        "conversation.archive": 1,
        "conversation.delete": 1,
        "plan.set": 1,
        "quota.refuse": 1,
    }
    # Through the edge: the user is the subject, the edge's client (which exchanged the user's token
    # for the conversation service, once, the exchange cached after) the client; no actor between.
    # (The world's own token for the conversation service is the test exchanger's: not the edge's.)
    test_exchanger = (await world.tokens.exchanger()).client_id
    [to_conversation] = [
        r
        for r in of(found, "token.exchange")
        if r.detail["audience"] == service_audience("conversation") and r.client_id != test_exchanger
    ]
    edge_client = to_conversation.client_id
    assert edge_client != world.tenant.client.client_id
    writes = [r for r in found if r.action.startswith(("agent.", "conversation."))]
    assert {(r.subject, r.client_id, r.actors, r.outcome) for r in writes} == {
        (user_id, edge_client, (), "success")
    }
    [first] = of(found, "agent.create", f"agent/{ada['id']}")
    assert first.request_id == created.headers["x-request-id"] == first.correlation_id
    [archive] = of(found, "conversation.archive")
    assert archive.detail["archive_id"] == archived["archive"]["id"]
    [plan] = of(found, "plan.set")
    assert (plan.resource, plan.subject, plan.detail["tier"]) == (
        f"plan/{tenant}",
        admin.client_id,
        "TIER_FREE",
    )
    [quota] = of(found, "quota.refuse")
    assert (quota.outcome, quota.subject, quota.client_id) == ("denied", user_id, exchanger_id)
    assert quota.actors == (("agent", agent_id),)
    assert quota.resource == f"reservation/{hold.reservation_id}"

    await _read_through_the_edge(world, db, found)


async def _read_through_the_edge(world: World, db: asyncpg.Pool, found: list[Row]) -> None:
    tenant = world.tenant
    globex = await world.tokens.tenant()
    acme_admin = await signed_in(
        world.tokens, tenant, await admin_user(world.tokens, tenant), [EDGE_AUDIENCE]
    )
    globex_admin = await signed_in(
        world.tokens, globex, await admin_user(world.tokens, globex), [EDGE_AUDIENCE]
    )

    def client(token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=world.front_url, timeout=10, headers={"authorization": f"Bearer {token}"}
        )

    async with client(acme_admin) as acme, client(globex_admin) as other, client(world.edge_token) as user:
        denied = await user.get("/v1/audit")
        assert denied.status_code == 403, denied.text
        assert "audit:read" in denied.json()["message"]

        everything = ok(await acme.get("/v1/audit", params={"page_size": 1000}), 200)
        stored = await rows(db, tenant.tenant_id)
        assert [e["action"] for e in everything["events"]] == [r.action for r in reversed(stored)]
        assert {r.resource for r in found} <= {e["resource"] for e in everything["events"]}
        theirs = ok(await other.get("/v1/audit", params={"page_size": 1000}), 200)
        assert theirs["events"]
        assert {e["tenantId"] for e in theirs["events"]} == {globex.tenant_id}
        assert not {e["id"] for e in theirs["events"]} & {e["id"] for e in everything["events"]}

        creates = ok(await acme.get("/v1/audit", params={"action": "agent.create"}), 200)
        assert len(creates["events"]) == 2
        first_page = ok(await acme.get("/v1/audit", params={"action": "agent.create", "page_size": 1}), 200)
        second_page = ok(
            await acme.get(
                "/v1/audit",
                params={"action": "agent.create", "page_size": 1, "page_token": first_page["nextPageToken"]},
            ),
            200,
        )
        assert [e["id"] for e in first_page["events"] + second_page["events"]] == [
            e["id"] for e in creates["events"]
        ]
        assert second_page["nextPageToken"] == ""
        [quota] = ok(await acme.get("/v1/audit", params={"action": "quota.refuse"}), 200)["events"]
        assert quota["actorChain"][0]["type"] == "ACTOR_TYPE_AGENT"
        newest = everything["events"][0]["time"]
        since = ok(await acme.get("/v1/audit", params={"start_time": newest}), 200)
        assert [e["id"] for e in since["events"]] == [everything["events"][0]["id"]]

        bad_action = await acme.get("/v1/audit", params={"action": "agent.rename"})
        assert bad_action.status_code == 400
        assert bad_action.json()["message"].startswith("action:")
        bad_time = await acme.get("/v1/audit", params={"start_time": "yesterday"})
        assert bad_time.status_code == 400
        assert bad_time.json()["message"].startswith("start_time:")
        before_year_one = await acme.get("/v1/audit", params={"end_time": "0001-01-01T00:00:00+01:00"})
        assert before_year_one.status_code == 400
        assert before_year_one.json()["message"].startswith("end_time:")

        document = ok(await acme.get("/v1/openapi.json"), 200)
        assert document["paths"]["/v1/audit"]["get"]["operationId"] == "listAuditEvents"

    # `macp audit`: the URL it asks and the table it prints from the edge's answer.
    args = build_parser("audit").parse_args(["audit", "--action", "quota.refuse", "--limit", "5"])
    assert audit_url("http://edge", args) == "http://edge/v1/audit?page_size=5&action=quota.refuse"
    table = render_audit({"events": [quota]})
    assert "quota.refuse" in table
    assert f"agent:{quota['actorChain'][0]['id']}" in table
