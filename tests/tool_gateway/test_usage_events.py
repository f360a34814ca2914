"""Tool calls are usage: one TOOL_CALL event per call an upstream answered (a result or the tool's
own error), on the real usage topic and in metering, none for a call refused before the upstream
or never answered by it; a free tenant past its monthly tool calls is refused before the upstream;
and a call delivered twice (its Commit and its Kafka copy, a retried Commit) counts once."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf import json_format, struct_pb2
from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.metering.events import row_of_event
from services.metering.store.ingest import record_batch
from services.runtime.usage_ids import tool_call_event_id
from tests.agent_proxy.usage_topic import read_usage
from tests.metering.topics import eventually
from tests.tool_gateway.conftest import Caller, refused, register
from tests.tool_gateway.usage_mesh import Tenanted, UsageMesh, usage_mesh

pytestmark = pytest.mark.integration

FREE_TOOL_CALLS = 1_000


@pytest.fixture
async def mesh(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[UsageMesh]:
    async with usage_mesh(service_environ, tmp_path) as running:
        yield running


def arguments(**values: str | int) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def call(caller: Caller, name: str, **values: str | int) -> pb.CallToolResponse:
    response: pb.CallToolResponse = await caller.stub.CallTool(
        pb.CallToolRequest(name=name, arguments=arguments(**values)), timeout=10
    )
    return response


async def audited_results(mesh: UsageMesh, tenant_id: str) -> list[str]:
    rows = await mesh.db.fetch(
        "SELECT detail->>'result' AS result FROM audit_events WHERE tenant_id = $1 AND action = 'tool.call'"
        " ORDER BY event_time, id",
        tenant_id,
    )
    return [row["result"] for row in rows]


async def tool_call_rows(mesh: UsageMesh, tenant_id: str) -> list[uuid.UUID]:
    rows = await mesh.db.fetch(
        "SELECT event_id FROM metering_usage_events WHERE tenant_id = $1 AND event_type = $2",
        tenant_id,
        usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL,
    )
    return [row["event_id"] for row in rows]


async def tool_quota(tenant: Tenanted) -> metering_pb.QuotaStatus:
    check: metering_pb.CheckQuotaResponse = await tenant.metering.CheckQuota(
        metering_pb.CheckQuotaRequest(
            tenant_id=tenant.tenant.tenant_id, meter=metering_pb.METER_TOOL_CALLS, quantity=1
        ),
        timeout=10,
    )
    return check.quota


async def test_each_answered_call_is_one_tool_call_event_with_its_dimensions(mesh: UsageMesh) -> None:
    alice = mesh.alice.caller
    await register(alice, "weather", mesh.weather_url)
    await register(alice, "calculator", mesh.calculator_url)
    forecast = await call(alice, "weather__forecast", city="Lyon")
    division = await call(alice, "calculator__divide", a=1, b=0)  # the tool's own error: still usage
    assert division.is_error
    # Refused before any upstream (an unknown server), or never answered (a 500): no usage.
    await register(alice, "counting", mesh.counting_url)
    await refused(call(alice, "nowhere__forecast", city="Lyon"))
    assert (await refused(call(alice, "counting__fail500"))).code() == grpc.StatusCode.UNAVAILABLE

    records = await read_usage(
        mesh.environ["MACP_KAFKA_BOOTSTRAP"], mesh.topic, until=2, tenant_id=alice.tenant_id, seconds=20
    )
    events = {record.event.dimensions.tool: record for record in records}
    assert sorted(events) == ["divide", "forecast"]
    weather = events["forecast"].event
    assert weather.type == usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL
    assert (weather.tenant_id, weather.dimensions.tool_server) == (alice.tenant_id, "weather")
    assert weather.user_id  # the token's subject
    assert events["divide"].event.user_id == weather.user_id
    # The text and the structured content (compact JSON), as the caller got them.
    structured = json.dumps(
        json_format.MessageToDict(forecast.structured_content), separators=(",", ":"), ensure_ascii=False
    )
    assert weather.dimensions.result_bytes == len(forecast.text.encode()) + len(structured.encode())
    assert weather.dimensions.duration_ms == forecast.duration_ms
    assert (weather.agent_id, weather.conversation_id, weather.turn_id) == ("", "", "")
    assert events["divide"].event.dimensions.tool_server == "calculator"
    assert events["forecast"].headers["ce_type"] == b"macp.usage.v1.tool_call"
    assert events["forecast"].headers["ce_source"] == b"/macp/tool-gateway"
    assert events["forecast"].key == alice.tenant_id.encode()
    # Committed with its hold as well: in metering at once, under the same ids.
    assert sorted(map(str, await tool_call_rows(mesh, alice.tenant_id))) == sorted(
        r.event.event_id for r in records
    )
    quota = await tool_quota(mesh.alice)
    assert (quota.used_quantity, quota.reserved_quantity) == (2, 0)  # the refused ones' holds went back
    assert mesh.seen.calls == {"fail500": 1}
    assert await audited_results(mesh, alice.tenant_id) == ["ok", "tool_error", "protocol"]


async def test_a_free_tenant_past_its_monthly_tool_calls_is_refused_before_the_upstream(
    mesh: UsageMesh,
) -> None:
    alice = mesh.alice.caller
    await register(alice, "counting", mesh.counting_url)
    # The month so far: one call short of the free limit (recorded as metering records any batch).
    earlier = []
    for index in range(FREE_TOOL_CALLS - 1):
        event = usage_pb2.UsageEvent(
            event_id=tool_call_event_id(f"earlier-{alice.tenant_id}-{index}"),
            tenant_id=alice.tenant_id,
            type=usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL,
            dimensions=usage_pb2.UsageDimensions(tool_server="counting", tool="fine"),
        )
        event.time.FromDatetime(datetime.now(UTC))
        earlier.append(row_of_event(event))
    await record_batch(mesh.db, earlier)

    assert (await call(alice, "counting__fine")).text == "fine"  # the 1,000th
    error = await refused(call(alice, "counting__fine"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "free tier limit of 1000 calls (tool calls) per month" in (error.details() or "")
    assert dict(error.trailing_metadata() or ())["macp-error-reason"] == "QUOTA_EXCEEDED"
    assert mesh.seen.calls == {"fine": 1}  # the refused call never reached the upstream
    assert await audited_results(mesh, alice.tenant_id) == ["ok", "quota"]
    assert len(await tool_call_rows(mesh, alice.tenant_id)) == FREE_TOOL_CALLS
    # Another free tenant is not touched by it.
    await register(mesh.bob.caller, "counting", mesh.counting_url)
    assert (await call(mesh.bob.caller, "counting__fine")).text == "fine"


async def test_a_call_delivered_twice_and_committed_again_counts_once(mesh: UsageMesh) -> None:
    alice = mesh.alice.caller
    await register(alice, "counting", mesh.counting_url)
    await call(alice, "counting__fine")
    [record] = await read_usage(
        mesh.environ["MACP_KAFKA_BOOTSTRAP"], mesh.topic, until=1, tenant_id=alice.tenant_id, seconds=20
    )
    event = record.event
    # The Kafka copy reached metering's consumer after the Commit had recorded the call: a later
    # record of the same partition (the test's topic has one) is recorded only after it.
    marker = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()), tenant_id=alice.tenant_id, type=usage_pb2.USAGE_EVENT_TYPE_API_CALL
    )
    marker.time.GetCurrentTime()
    producer = AIOKafkaProducer(bootstrap_servers=mesh.environ["MACP_KAFKA_BOOTSTRAP"], acks="all")
    await producer.start()
    try:
        # The same call delivered again (a publisher that crashed between the broker's ack and its
        # outbox delete sends it twice), then the marker behind it.
        await producer.send_and_wait(mesh.topic, event.SerializeToString(), key=alice.tenant_id.encode())
        await producer.send_and_wait(mesh.topic, marker.SerializeToString(), key=alice.tenant_id.encode())
    finally:
        await producer.stop()

    async def consumed() -> bool:
        recorded = await mesh.db.fetchval(
            "SELECT count(*) FROM metering_usage_events WHERE tenant_id = $1", alice.tenant_id
        )
        return bool(recorded == 2)

    await eventually(consumed, 20, "the call and the marker recorded")
    # A retried Commit of the call's own hold (its id is the call's, in the audit row), with its event.
    call_id = await mesh.db.fetchval(
        "SELECT detail->>'call_id' FROM audit_events WHERE tenant_id = $1 AND action = 'tool.call'",
        alice.tenant_id,
    )
    assert tool_call_event_id(call_id) == event.event_id
    retried: metering_pb.CommitResponse = await mesh.alice.metering.Commit(
        metering_pb.CommitRequest(reservation_id=call_id, usage=[event]), timeout=10
    )
    assert (retried.recorded_count, retried.already_committed) == (0, True)
    assert [str(row) for row in await tool_call_rows(mesh, alice.tenant_id)] == [event.event_id]
    assert (await tool_quota(mesh.alice)).used_quantity == 1
    assert mesh.seen.calls == {"fine": 1}
