"""Usage is never lost: one AGENT_TURN event per Generate on the Kafka usage topic (serialized
protobuf, keyed by tenant, CloudEvents headers), also across a Kafka outage longer than every wait
of the publisher's (its retry backoff at its cap, its claim of idle entries)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import usage_pb2

from services.provider_server.server import RunningProviderServer
from services.runtime.usage_publisher import CLAIM_IDLE_SECONDS, RETRY_MAX_SECONDS
from services.stack.config import free_port
from services.stack.infra import Infrastructure
from services.stack.kafka import Kafka
from tests.agent_proxy.conftest import Proxy, generate_request, provider_environ, running_proxy
from tests.agent_proxy.usage_topic import read_usage
from tests.tokens import TokenWorld

pytestmark = pytest.mark.integration

# Long enough for the publisher's backoff to reach its cap and retry there, and for its own
# entries to go idle past the claim time twice over: the outage outlasts every wait of the
# publisher's, which a longer one would only repeat.
OUTAGE_SECONDS = 2 * CLAIM_IDLE_SECONDS + 2 * RETRY_MAX_SECONDS
GENERATES = 200


async def test_a_completed_generate_outside_a_conversation_publishes_one_agent_turn_event(
    proxy: Proxy,
) -> None:
    request = generate_request(proxy.tenant.tenant_id, in_conversation=False)
    responses = await proxy.generate(request)
    completion = responses[-1].completion
    records = await read_usage(
        proxy.environ["MACP_KAFKA_BOOTSTRAP"],
        proxy.environ["MACP_KAFKA_USAGE_TOPIC"],
        until=1,
        tenant_id=proxy.tenant.tenant_id,
    )
    [record] = records
    event = record.event
    assert event.type == usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN
    assert (event.turn_id, event.conversation_id, event.agent_id) == (
        request.turn_id,
        request.conversation_id,
        request.agent_id,
    )
    assert event.user_id  # from the token, as the tenant is
    assert event.dimensions.input_tokens == completion.usage.input_tokens
    assert event.dimensions.output_tokens == completion.usage.output_tokens
    assert (event.dimensions.provider, event.dimensions.model) == ("local", "echo-1")
    assert record.key == proxy.tenant.tenant_id.encode()
    assert record.headers["ce_id"] == event.event_id.encode()
    assert record.headers["ce_type"] == b"macp.usage.v1.agent_turn"
    assert record.headers["ce_source"] == b"/macp/agent-proxy"
    assert record.headers["ce_specversion"] == b"1.0"
    assert record.headers["ce_time"] == event.time.ToJsonString().encode()


async def test_a_turn_of_a_conversation_is_billed_by_its_round_not_by_the_proxy(proxy: Proxy) -> None:
    # The orchestrator settling the round bills it, with its stored answer (agent_proxy/usage.py).
    tenant = proxy.tenant.tenant_id
    in_round = generate_request(tenant)
    outside = generate_request(tenant, in_conversation=False)
    await proxy.generate(in_round)
    await proxy.generate(outside)  # published after the round's turn would have been
    records = await read_usage(
        proxy.environ["MACP_KAFKA_BOOTSTRAP"],
        proxy.environ["MACP_KAFKA_USAGE_TOPIC"],
        until=1,
        tenant_id=tenant,
    )
    assert [record.event.turn_id for record in records] == [outside.turn_id]


async def test_a_kafka_outage_loses_no_usage_event(
    infrastructure: Infrastructure,
    service_environ: dict[str, str],
    tokens: TokenWorld,
    provider_server: RunningProviderServer,
    tmp_path: Path,
) -> None:
    # A broker of this test's own, storing in S3 so that a restart keeps the topic and its records.
    kafka = Kafka(tmp_path, port=free_port(), storage="s3", s3=infrastructure.s3)
    await asyncio.to_thread(kafka.start)
    environ = {
        **service_environ,
        **provider_environ(provider_server.base_url),
        "MACP_KAFKA_BOOTSTRAP": kafka.url,
        "MACP_AGENT_PROXY_MAX_CONCURRENCY": "50",
    }
    try:
        async with running_proxy(environ, tokens) as proxy:
            tenant = proxy.tenant.tenant_id

            async def one() -> pb.FinishReason.ValueType:
                request = generate_request(tenant, max_tokens=16, in_conversation=False)
                responses = await proxy.generate(request)
                return responses[-1].completion.finish_reason

            before = [asyncio.create_task(one()) for _ in range(GENERATES // 4)]
            await asyncio.sleep(0.05)
            await asyncio.to_thread(kafka.stop)  # mid-way through the first Generates
            stopped_at = asyncio.get_running_loop().time()
            during = [asyncio.create_task(one()) for _ in range(GENERATES - len(before))]
            finished = await asyncio.gather(*before, *during)
            # Generate never waits for Kafka: every one was answered in full.
            assert set(finished) <= {pb.FINISH_REASON_STOP, pb.FINISH_REASON_MAX_TOKENS}
            assert len(finished) == GENERATES
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (asyncio.get_running_loop().time() - stopped_at)))
            await asyncio.to_thread(kafka.start)
            records = await read_usage(
                kafka.url, environ["MACP_KAFKA_USAGE_TOPIC"], until=GENERATES, tenant_id=tenant, seconds=60
            )
    finally:
        await asyncio.to_thread(kafka.stop)
    distinct = {record.event.event_id for record in records}
    assert len(distinct) == GENERATES
    assert {record.event.type for record in records} == {usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN}
