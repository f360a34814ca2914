"""`GET /v1/usage?group_by=day` and `agent_id` end to end (client -> Envoy -> edge -> Envoy ->
metering -> Postgres): a past month's days with their list price, one agent's days, and the
parameters refused by name."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from services.cli.main import build_parser
from services.cli.usage import get_json, render_usage, usage_url
from tests.metering.test_edge_usage import UsageSlice, usage_slice  # noqa: F401 (the fixture)
from tests.metering.test_reports import publish
from tests.metering.test_usage_days import AGENT_A, APRIL, MARCH, march_usage
from tests.metering.topics import eventually


async def test_usage_per_day_and_per_agent_through_the_edge(
    usage_slice: UsageSlice,  # noqa: F811
    producer: AIOKafkaProducer,
) -> None:
    await publish(producer, usage_slice.topic, march_usage(usage_slice.tenant.tenant_id))
    march = {"start": MARCH.isoformat(), "end": APRIL.isoformat()}

    async with usage_slice.client() as client:

        async def counted() -> bool:
            response = await client.get("/v1/usage", params={**march, "group_by": "day"})
            return response.status_code == 200 and response.json()["totals"]["eventCount"] == "15"

        await eventually(counted, 30, "March's 15 events in /v1/usage")
        by_day = (await client.get("/v1/usage", params={**march, "group_by": "day"})).json()
        assert [(g["key"], g["totals"].get("agentTurns", "0")) for g in by_day["groups"]] == [
            ("2026-03-01", "5"),
            ("2026-03-02", "1"),
            ("2026-03-31", "0"),
        ]
        # A tenant on the free plan: everything under a hard limit, nothing priced.
        assert {g["totals"].get("costCents", "0") for g in by_day["groups"]} == {"0"}

        one_agent = await client.get("/v1/usage", params={**march, "group_by": "day", "agent_id": AGENT_A})
        assert [(g["key"], g["totals"]["inputTokens"]) for g in one_agent.json()["groups"]] == [
            ("2026-03-01", "300"),
            ("2026-03-02", "1"),
        ]
        # An empty agent_id is every agent's usage.
        everyone = await client.get("/v1/usage", params={**march, "group_by": "day", "agent_id": ""})
        assert everyone.json()["totals"]["eventCount"] == "15"

        bad_agent = await client.get("/v1/usage", params={"group_by": "day", "agent_id": "agent-1"})
        assert bad_agent.status_code == 400
        assert "agent_id" in bad_agent.json()["message"]
        bad_group = await client.get("/v1/usage", params={"group_by": "week"})
        assert bad_group.status_code == 400
        assert bad_group.json()["message"].startswith("group_by:")
        assert "day" in bad_group.json()["message"]

    # `macp usage --group-by day --agent-id A` reads the same route: a row a day, a cost column.
    arguments = build_parser("usage").parse_args(
        [
            "usage",
            "--group-by",
            "day",
            "--agent-id",
            AGENT_A,
            "--start",
            march["start"],
            "--end",
            march["end"],
        ]
    )
    table = await asyncio.to_thread(
        lambda: render_usage(get_json(usage_url(usage_slice.front_url, arguments), usage_slice.token))
    )
    lines = table.splitlines()
    assert lines[0].split()[0] == "group"
    assert lines[0].split()[-2:] == ["cost", "USD"]
    assert [line.split()[0] for line in lines[1:]] == ["2026-03-01", "2026-03-02", "TOTAL"]
    assert lines[-1].split()[-1] == "0.00"
