"""`GET /v1/usage` and `GET /v1/usage/invoice-preview` end to end: client -> Envoy front listener
-> edge (exchanges the user's token for one addressed to metering) -> Envoy mesh listener ->
metering -> Postgres, over usage that came in through the real topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.cli.main import build_parser
from services.cli.usage import get_json, render_invoice, render_usage, usage_url
from services.metering.service import DEFINITION as METERING
from services.runtime.auth.settings import EDGE_AUDIENCE
from services.runtime.settings import Env
from services.stack.config import free_port
from tests.e2e.conftest import _wait_healthy
from tests.edge_and_envoy import edge_and_envoy
from tests.metering.test_reports import publish, this_month
from tests.metering.topics import eventually
from tests.metering.usage_events import MODELS, agent_turn
from tests.runtime.serving import running
from tests.tokens import Tenant, TokenWorld


@dataclass(frozen=True)
class UsageSlice:
    front_url: str
    tenant: Tenant
    token: str
    topic: str

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token or self.token}"} if token != "" else {}
        return httpx.AsyncClient(base_url=self.front_url, timeout=10, headers=headers)


@pytest.fixture
async def usage_slice(
    metering_environ: dict[str, str], tokens: TokenWorld, tmp_path: Path
) -> AsyncIterator[UsageSlice]:
    ports = {
        "MACP_METERING_PORT": str(free_port()),
        "MACP_EDGE_PORT": str(free_port()),
        "MACP_EDGE_METRICS_PORT": "0",
        "MACP_ENVOY_FRONT_PORT": str(free_port()),
        "MACP_ENVOY_MESH_PORT": str(free_port()),
        "MACP_ENVOY_ADMIN_PORT": str(free_port()),
    }
    # The token service is reached directly by the metering service (as in the other metering
    # tests) and through the mesh by the edge.
    environ = {**tokens.service_environ(metering_environ), **ports}
    edge_environ = {
        **tokens.environ,
        **ports,
        "MACP_MESH_ADDRESS": f"127.0.0.1:{ports['MACP_ENVOY_MESH_PORT']}",
        # Only the token and metering services run here: the edge is ready once they answer.
        "MACP_EDGE_NEEDS": "token,metering",
    }
    env = Env(edge_environ)
    async with running(METERING, environ), edge_and_envoy(env, tmp_path) as envoy:
        for cluster in ("metering", "edge", "token"):
            await _wait_healthy(envoy.ports.admin, cluster)
        tenant = await tokens.tenant()
        token = await tokens.user_token(tenant, [EDGE_AUDIENCE])
        yield UsageSlice(envoy.url, tenant, token, environ["MACP_KAFKA_USAGE_TOPIC"])


async def test_usage_and_invoice_preview_through_the_edge(
    usage_slice: UsageSlice, producer: AIOKafkaProducer
) -> None:
    tenant = usage_slice.tenant.tenant_id
    events = [agent_turn(tenant, model=MODELS[i % 2]) for i in range(12)]
    events += [agent_turn("someone-else") for _ in range(4)]
    await publish(producer, usage_slice.topic, events)
    start = this_month().start_time.ToJsonString()

    async with usage_slice.client() as client:

        async def counted() -> bool:
            response = await client.get("/v1/usage", params={"group_by": "model"})
            return response.status_code == 200 and response.json()["totals"]["eventCount"] == "12"

        await eventually(counted, 30, "the tenant's 12 events in /v1/usage")
        by_model = (await client.get("/v1/usage", params={"group_by": "model", "start": start})).json()
        assert {g["key"]: g["totals"]["agentTurns"] for g in by_model["groups"]} == {
            MODELS[0]: "6",
            MODELS[1]: "6",
        }

        preview = await client.get("/v1/usage/invoice-preview")
        assert preview.status_code == 200
        body = preview.json()
        turns = next(line for line in body["lineItems"] if line["meter"] == "METER_AGENT_TURNS")
        # A tenant with no plan set is on the free plan: 100 turns included, a hard limit, no charge.
        assert (turns["quantity"], turns["includedQuantity"], turns["amountCents"]) == ("12", "12", "0")
        # The plan's own allowance beside the part of the usage it covers: a gauge's two ends.
        assert (turns["hasAllowance"], turns["allowanceQuantity"], turns["hardLimit"]) == (True, "100", True)
        assert (body["tier"], body["currency"], body["totalCents"]) == ("TIER_FREE", "USD", "0")

        bad = await client.get("/v1/usage", params={"group_by": "planet"})
        assert bad.status_code == 400
        assert bad.json()["message"].startswith("group_by:")
        bad_month = await client.get("/v1/usage/invoice-preview", params={"month": "2026-13"})
        assert bad_month.status_code == 400
        assert "billing_month" in bad_month.json()["message"]

    # `macp usage` reads the same routes.
    arguments = build_parser("usage").parse_args(["usage", "--group-by", "model"])
    table = await asyncio.to_thread(
        lambda: render_usage(get_json(usage_url(usage_slice.front_url, arguments), usage_slice.token))
    )
    assert table.splitlines()[0].split()[:2] == ["group", "turns"]
    assert table.splitlines()[-1].split()[:2] == ["TOTAL", "12"]
    invoice_arguments = build_parser("usage").parse_args(["usage", "--invoice"])
    invoice = await asyncio.to_thread(
        lambda: render_invoice(
            get_json(usage_url(usage_slice.front_url, invoice_arguments), usage_slice.token)
        )
    )
    assert "Agent turns" in invoice
    assert invoice.splitlines()[-1].split()[-2:] == ["0.00", "USD"]

    async with usage_slice.client(token="") as anonymous:
        assert (await anonymous.get("/v1/usage")).status_code == 401
