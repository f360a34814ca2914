"""A tenant is metered by the plan its tier names from its first call on, unless an operator set
one (through the edge's `PUT /v1/admin/tenants/{tenant}/plan`, audited): one mesh for the module,
each test with tenants of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import httpx
import pytest
from macp.common.v1 import principal_pb2
from macp.metering.v1 import metering_service_pb2 as pb
from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc

from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from services.token import scopes
from tests.audit.helpers import rows
from tests.tokens import Tenant, bearer
from tests.world import World

pytestmark = pytest.mark.integration

METERING_AUDIENCE = service_audience("metering")
TURN_SCOPES = "usage:read usage:write"
PAST_FREE_TURNS = 150  # the free plan refuses past 100 agent turns a month


@pytest.fixture(scope="module")
async def db(module_world: World) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(module_world.environ["MACP_DATABASE_URL"], min_size=1, max_size=2) as pool:
        yield pool


async def tenant_of(world: World, tier: principal_pb2.Tier.ValueType) -> tuple[Tenant, str]:
    """A new tenant of `tier` and its user's token for metering, as the services running its turns
    present it (the user's token exchanged, tier claim and all)."""
    tenant = await world.tokens.tenant(scope=TURN_SCOPES, tier=tier)
    return tenant, await world.tokens.user_token(tenant, [METERING_AUDIENCE])


async def reserve(world: World, tenant: Tenant, token: str, quantity: int) -> pb.ReserveResponse:
    request = pb.ReserveRequest(
        reservation_id=str(uuid.uuid4()),
        tenant_id=tenant.tenant_id,
        meter=pb.METER_AGENT_TURNS,
        quantity=quantity,
    )
    response: pb.ReserveResponse = await pb_grpc.MeteringServiceStub(world.channel).Reserve(
        request, metadata=bearer(token), timeout=10
    )
    return response


async def operator_token(world: World, audience: list[str], scope: str = scopes.ADMIN) -> str:
    harness = world.tokens.harness
    operator = await harness.register(scope=scope)
    return (await harness.client_token(operator, scope, audience)).access_token


async def put_plan(world: World, tenant_id: str, token: str, body: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=world.front_url, timeout=15) as client:
        return await client.put(
            f"/v1/admin/tenants/{tenant_id}/plan", json=body, headers={"authorization": f"Bearer {token}"}
        )


async def test_a_pro_tenant_is_metered_as_pro_and_a_free_one_as_free(module_world: World) -> None:
    pro, pro_token = await tenant_of(module_world, principal_pb2.TIER_PRO)
    free, free_token = await tenant_of(module_world, principal_pb2.TIER_FREE)

    held = await reserve(module_world, pro, pro_token, PAST_FREE_TURNS)
    assert (held.quota.tier, held.quota.included_quantity, held.quota.hard_limit) == (
        principal_pb2.TIER_PRO,
        10_000,
        False,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reserve(module_world, free, free_token, PAST_FREE_TURNS)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 100 turns" in (refused.value.details() or "")

    # An administrator of another tenant reads the plan metering learned from the tenant's calls.
    admin = await operator_token(module_world, [METERING_AUDIENCE], f"{scopes.ADMIN} usage:read")
    plan: pb.GetPlanResponse = await pb_grpc.MeteringServiceStub(module_world.channel).GetPlan(
        pb.GetPlanRequest(tenant_id=pro.tenant_id), metadata=bearer(admin), timeout=10
    )
    assert plan.plan.tier == principal_pb2.TIER_PRO
    assert {a.meter: a.included_quantity for a in plan.plan.allowances}[pb.METER_AGENT_TURNS] == 10_000


async def test_an_operator_sets_a_plan_through_the_edge_over_the_tier_and_it_is_audited(
    module_world: World, db: asyncpg.Pool
) -> None:
    pro, pro_token = await tenant_of(module_world, principal_pb2.TIER_PRO)
    await reserve(module_world, pro, pro_token, 1)  # metered as pro first
    operator = await operator_token(module_world, [EDGE_AUDIENCE, METERING_AUDIENCE])

    answer = await put_plan(module_world, pro.tenant_id, operator, {"plan": "free"})

    assert answer.status_code == 200, answer.text
    assert answer.json()["plan"]["tier"] == "TIER_FREE"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reserve(module_world, pro, pro_token, PAST_FREE_TURNS)  # the set plan wins over the tier
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    [audited] = await rows(db, pro.tenant_id, "plan.set")
    assert (audited.resource, audited.detail["tier"], audited.outcome) == (
        f"plan/{pro.tenant_id}",
        "TIER_FREE",
        "success",
    )

    enterprise = {
        "plan": "enterprise",
        "allowances": [
            {
                "meter": "METER_AGENT_TURNS",
                "includedQuantity": "200",
                "hardLimit": True,
                "overageBlockSize": "1",
            }
        ],
    }
    answer = await put_plan(module_world, pro.tenant_id, operator, enterprise)
    assert answer.status_code == 200, answer.text
    held = await reserve(module_world, pro, pro_token, PAST_FREE_TURNS)
    assert (held.quota.tier, held.quota.included_quantity) == (principal_pb2.TIER_ENTERPRISE, 200)


async def test_the_plan_route_refuses_callers_without_macp_admin_and_bad_bodies(module_world: World) -> None:
    tenant = await module_world.other_tenant()
    user = await put_plan(module_world, tenant.tenant.tenant_id, tenant.edge_token, {"plan": "pro"})
    assert user.status_code == 403, user.text
    assert "macp:admin" in user.json()["message"]

    operator = await operator_token(module_world, [EDGE_AUDIENCE, METERING_AUDIENCE])
    bad_plan = await put_plan(module_world, tenant.tenant.tenant_id, operator, {"plan": "platinum"})
    assert bad_plan.status_code == 400, bad_plan.text
    assert bad_plan.json()["message"].startswith("plan: one of free, pro, enterprise")
    unknown = await put_plan(module_world, tenant.tenant.tenant_id, operator, {"plan": "pro", "tier": "x"})
    assert (unknown.status_code, unknown.json()["message"].split(":")[0]) == (400, "tier")
    # Enterprise needs allowances: metering's own check, named.
    bare = await put_plan(module_world, tenant.tenant.tenant_id, operator, {"plan": "enterprise"})
    assert bare.status_code == 400, bare.text

    # An operator token for the edge alone cannot reach metering: told so, not a bare 401.
    edge_only = await operator_token(module_world, [EDGE_AUDIENCE])
    refused = await put_plan(module_world, tenant.tenant.tenant_id, edge_only, {"plan": "pro"})
    assert refused.status_code == 403, refused.text
    assert METERING_AUDIENCE in refused.json()["message"]


async def test_the_openapi_document_describes_the_plan_route(module_world: World) -> None:
    async with httpx.AsyncClient(base_url=module_world.front_url, timeout=15) as client:
        document = (await client.get("/v1/openapi.json")).json()
    operation = document["paths"]["/v1/admin/tenants/{tenant}/plan"]["put"]
    assert operation["operationId"] == "setTenantPlan"
    body = document["components"]["schemas"]["PlanChange"]
    assert body["properties"]["plan"]["enum"] == ["free", "pro", "enterprise"]
    assert {"403", "400"} <= set(operation["responses"])
