"""Trace context through the runtime: the server interceptor and the mesh channel's interceptors
(two real services in-process, one calling the other), the usage publisher's outbox and Kafka
headers (real Redis and Kafka), and the tracing settings.

Tracing off, a caller's `traceparent` reaches the next service exactly as it was sent (same span
id: nothing in between made a span); tracing on, every hop is a span of the caller's trace."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as proxy_grpc
from macp.common.v1 import usage_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from services.runtime import tracing
from services.runtime.context import RpcContext
from services.runtime.interceptors import AdmitAll
from services.runtime.kafka import ensure_topics
from services.runtime.mesh import open_mesh_channel
from services.runtime.redis_client import create_redis
from services.runtime.server import ServiceDefinition, servicer_only
from services.runtime.settings import Env, KafkaSettings, RedisSettings, SettingsError, TracingSettings
from services.runtime.usage_publisher import UsagePublisher, outbox_key
from services.stack.infra import Infrastructure
from tests.runtime.serving import PROBE_ENVIRON, PROBE_SPEC, channel, running

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
LIST = "/macp.agent_proxy.v1.AgentProxyService/ListProviders"
GENERATE = "/macp.agent_proxy.v1.AgentProxyService/Generate"


class Hop(proxy_grpc.AgentProxyServiceServicer):
    """ListProviders records the trace headers it was called with and, given a channel onward,
    calls the next hop's ListProviders and (to see a failed stream's span) its Generate."""

    def __init__(self, onward: grpc.aio.Channel | None = None) -> None:
        self.seen: list[tuple[str | None, str | None]] = []
        self._onward = onward

    async def ListProviders(
        self, request: proxy_pb.ListProvidersRequest, context: RpcContext
    ) -> proxy_pb.ListProvidersResponse:
        metadata = dict(context.invocation_metadata() or ())
        self.seen.append((metadata.get("traceparent"), metadata.get("tracestate")))  # type: ignore[arg-type]
        if self._onward is not None:
            stub = proxy_grpc.AgentProxyServiceStub(self._onward)
            await stub.ListProviders(proxy_pb.ListProvidersRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in stub.Generate(proxy_pb.GenerateRequest(), timeout=5):
                    pass
        return proxy_pb.ListProvidersResponse()


def hop_definition(name: str, servicer: Hop) -> ServiceDefinition:
    spec = dataclasses.replace(PROBE_SPEC, name=name)
    start = servicer_only(proxy_grpc.add_AgentProxyServiceServicer_to_server, servicer)
    return ServiceDefinition(spec=spec, start=start, authenticator=AdmitAll())


@asynccontextmanager
async def two_hops() -> AsyncIterator[tuple[grpc.aio.Channel, Hop, Hop]]:
    """A client channel to service `first`, whose ListProviders calls `second` over a mesh channel."""
    second = Hop()  # type: ignore[abstract]
    async with running(hop_definition("second", second), PROBE_ENVIRON) as b:
        onward = open_mesh_channel(f"127.0.0.1:{b.port}")
        first = Hop(onward)  # type: ignore[abstract]
        try:
            async with running(hop_definition("first", first), PROBE_ENVIRON) as a, channel(a.port) as opened:
                yield opened, first, second
        finally:
            await onward.close()


async def call(opened: grpc.aio.Channel, *metadata: tuple[str, str]) -> None:
    stub = proxy_grpc.AgentProxyServiceStub(opened)
    await stub.ListProviders(proxy_pb.ListProvidersRequest(), metadata=metadata, timeout=5)


async def test_tracing_off_forwards_the_callers_traceparent_unchanged() -> None:
    assert not tracing.enabled()
    async with two_hops() as (opened, first, second):
        await call(opened, ("traceparent", TRACEPARENT), ("tracestate", "macp=1"))
        await call(opened)
    assert first.seen == [(TRACEPARENT, "macp=1"), (None, None)]
    # The same span id one hop on: the first service made no span of its own in between.
    assert second.seen == [(TRACEPARENT, "macp=1"), (None, None)]


def served_by(spans: tuple[ReadableSpan, ...], name: str, service: str) -> ReadableSpan:
    """The one SERVER span of `name` that `service` made."""
    [found] = [
        s
        for s in spans
        if s.kind == SpanKind.SERVER
        and s.name == name
        and (s.attributes or {}).get(tracing.SERVICE_ATTRIBUTE) == service
    ]
    return found


async def test_tracing_on_makes_every_hop_a_span_of_the_callers_trace() -> None:
    with tracing.collecting() as exporter:
        async with two_hops() as (opened, _, second):
            await call(opened, ("traceparent", TRACEPARENT))
        spans = exporter.get_finished_spans()
    assert not tracing.enabled()  # collecting() put back what was there: nothing

    served = served_by(spans, LIST[1:], "first")
    called = [s for s in spans if s.kind == SpanKind.CLIENT]
    onward = served_by(spans, LIST[1:], "second")
    generated = served_by(spans, GENERATE[1:], "second")
    assert {s.context.trace_id for s in spans} == {int(TRACE_ID, 16)}
    assert served.kind == SpanKind.SERVER
    assert served.parent is not None
    assert served.parent.span_id == int(SPAN_ID, 16)
    assert served.parent.is_remote
    assert {s.name for s in called} == {LIST[1:], GENERATE[1:]}
    for client in called:
        assert client.parent is not None
        assert client.parent.span_id == served.context.span_id
        assert (client.attributes or {})[tracing.SERVICE_ATTRIBUTE] == "first"
    list_call = next(s for s in called if s.name == LIST[1:])
    generate_call = next(s for s in called if s.name == GENERATE[1:])
    assert onward.parent is not None
    assert onward.parent.span_id == list_call.context.span_id
    assert generated.parent is not None
    assert generated.parent.span_id == generate_call.context.span_id
    assert dict(served.attributes or {}) == {
        tracing.SERVICE_ATTRIBUTE: "first",
        "rpc.system": "grpc",
        "rpc.service": "macp.agent_proxy.v1.AgentProxyService",
        "rpc.method": "ListProviders",
        "rpc.grpc.status_code": 0,
    }
    # The refused stream (an empty GenerateRequest fails validation) ends both its spans with the
    # status the caller saw, the client's read in the call's done callback.
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (generate_call.attributes or {})["rpc.grpc.status_code"] == invalid
    assert (generated.attributes or {})["rpc.grpc.status_code"] == invalid
    assert not generate_call.status.is_ok
    # The second hop saw the first's CLIENT span as its parent, in the caller's trace.
    assert second.seen[0][0] == f"00-{TRACE_ID}-{list_call.context.span_id:016x}-01"


def usage_event() -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()), tenant_id=str(uuid.uuid4()), type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN
    )
    event.time.GetCurrentTime()
    return event


@pytest.mark.integration
async def test_a_usage_events_trace_survives_the_outbox_and_rides_in_its_kafka_headers(
    infrastructure: Infrastructure,
) -> None:
    env = Env({**infrastructure.env, "MACP_REDIS_KEY_PREFIX": f"test:{uuid.uuid4().hex[:8]}:"})
    kafka = KafkaSettings.from_env(env)
    redis_settings = RedisSettings.from_env(env)
    topic = f"test.traces.{uuid.uuid4().hex[:8]}"
    await ensure_topics(dataclasses.replace(kafka, topic_partitions=1), [topic])
    redis = create_redis(redis_settings)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest", group_id=None
    )
    await reader.start()
    publisher = UsagePublisher(
        redis, producer, topic=topic, key=outbox_key(redis_settings.key_prefix, topic), source="/test"
    )
    try:
        # Into the outbox only (the publisher is not started): the delivery below runs later,
        # outside the turn's span, as it would in another process after a restart.
        with tracing.collecting() as exporter, tracing.span("turn", service="agent-proxy") as turn:
            assert turn is not None
            await publisher.publish(traced := usage_event())
        # Tracing off: a caller's own headers go on unchanged.
        scope = tracing.begin("off", headers={"traceparent": TRACEPARENT})
        assert scope is not None
        assert scope.span is None
        try:
            await publisher.publish(carried := usage_event())
        finally:
            scope.end()
        await publisher.publish(bare := usage_event())
        await publisher.start()
        records: dict[str, ConsumerRecord[bytes, bytes]] = {}
        async with asyncio.timeout(20):
            while len(records) < 3:
                for batch in (await reader.getmany(timeout_ms=500)).values():
                    for record in batch:
                        records[usage_pb2.UsageEvent.FromString(record.value).event_id] = record
    finally:
        await publisher.stop()
        await reader.stop()
        await producer.stop()
        await redis.aclose()

    produced = next(s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER)
    assert produced.parent is not None
    assert produced.parent.span_id == turn.get_span_context().span_id
    assert (produced.attributes or {})[tracing.SERVICE_ATTRIBUTE] == "agent-proxy"
    headers = tracing.record_headers(records[traced.event_id].headers)
    assert headers == {
        "traceparent": f"00-{turn.get_span_context().trace_id:032x}-{produced.context.span_id:016x}"
        f"-{produced.context.trace_flags:02x}"
    }
    assert tracing.record_headers(records[carried.event_id].headers) == {"traceparent": TRACEPARENT}
    assert tracing.record_headers(records[bare.event_id].headers) == {}

    # The consumer's span continues the producer's.
    with tracing.collecting() as consumed:
        spans = tracing.consumer_spans(topic, records.values())
        tracing.end_spans(spans)
    finished = consumed.get_finished_spans()
    parents = {(s.context.trace_id, s.parent.span_id if s.parent else None) for s in finished}
    assert {s.kind for s in finished} == {SpanKind.CONSUMER}
    # The traced record's span continues the producer's; the carried one the caller's; the bare
    # record has nothing to continue.
    assert parents == {
        (turn.get_span_context().trace_id, produced.context.span_id),
        (int(TRACE_ID, 16), int(SPAN_ID, 16)),
    }
    assert len(spans) == 2


def test_tracing_settings_name_the_variable_at_fault() -> None:
    assert TracingSettings.from_env(Env({})).endpoint is None
    base = Env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"})
    assert TracingSettings.from_env(base).endpoint == "http://127.0.0.1:4318/v1/traces"
    full = Env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
        }
    )
    assert TracingSettings.from_env(full).endpoint == "http://collector:4318/v1/traces"
    ours = Env({"MACP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces", **{"OTEL_SDK_DISABLED": "false"}})
    assert TracingSettings.from_env(ours).endpoint == "http://jaeger:4318/v1/traces"
    off = Env({"MACP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces", "OTEL_SDK_DISABLED": "true"})
    assert TracingSettings.from_env(off).endpoint is None
    for environ, named in [
        ({"MACP_TRACES_ENDPOINT": "jaeger:4318"}, "MACP_TRACES_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"MACP_TRACES_SAMPLE_RATIO": "2"}, "MACP_TRACES_SAMPLE_RATIO"),
        ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED"),
    ]:
        with pytest.raises(SettingsError, match=named):
            TracingSettings.from_env(Env(environ))
