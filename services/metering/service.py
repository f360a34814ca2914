"""Wiring of the metering service: its servicer, its Kafka consumer, its migrations, its scopes.

Scopes: every call needs a token for `urn:macp:service:metering`; the reads (CheckQuota, GetUsage,
GetInvoicePreview, GetPlan) also need `usage:read`; holding and settling budget (Reserve, Commit,
Release) needs `usage:write`, which the services running turns hold; SetPlan needs `macp:admin`,
since a tenant does not choose its own price.

Beside the RPCs the process runs the usage topic's consumer (one member of the consumer group
every metering process joins) and the sweeper that applies quota deltas a crash left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from aiokafka import AIOKafkaConsumer
from macp.metering.v1 import metering_service_pb2 as pb
from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc
from prometheus_client import CollectorRegistry

from services.metering.dead_letters import DeadLetterPublisher
from services.metering.invoices import Invoices
from services.metering.plans import Plans
from services.metering.quota_counters import QuotaCounters
from services.metering.quotas import METER_NAMES, TIER_NAMES, Quotas, utc_now
from services.metering.refusals import QuotaRefusals
from services.metering.servicer import MeteringServicer
from services.metering.settings import MeteringSettings
from services.metering.sink import UsageSink
from services.metering.store.plans import PlanStore
from services.metering.store.usage import UsageStore
from services.metering.tenancy import ADMIN_SCOPE
from services.metering.usage import UsageReports
from services.runtime import kafka
from services.runtime.consumer import ConsumerLoop, ConsumerSettings, running
from services.runtime.metrics import ConsumerMetrics, quota_refusals_counter
from services.runtime.registry import service
from services.runtime.resources import Resources
from services.runtime.server import ServiceDefinition
from services.runtime.settings import Env, KafkaSettings, RedisSettings

log = logging.getLogger("macp.metering")

READ_SCOPE = "usage:read"
WRITE_SCOPE = "usage:write"
SPEC = service("metering")

# The quotas `register` built whose `background` has not started yet, by their Resources' identity:
# `background` is given the served metrics registry and hooks the refusal counter to them.
_built: dict[int, Quotas] = {}


def _counters(resources: Resources, env: Env) -> QuotaCounters:
    redis_settings = RedisSettings.from_env(env)
    pool = resources.require_db()
    return QuotaCounters(resources.require_redis(), redis_settings.key_prefix, pool, Plans(PlanStore(pool)))


async def register(server: grpc.aio.Server, resources: Resources, env: Env) -> None:
    settings = MeteringSettings.from_env(env)
    counters = _counters(resources, env)
    pool = resources.require_db()
    plans = Plans(PlanStore(pool))
    quotas = _built[id(resources)] = Quotas(counters, settings.reservation_ttl_seconds)
    servicer = MeteringServicer(
        quotas,
        plans,
        UsageReports(UsageStore(pool)),
        Invoices(UsageStore(pool), plans, utc_now),
        QuotaRefusals(pool),
    )
    pb_grpc.add_MeteringServiceServicer_to_server(servicer, server)


async def _sweep(counters: QuotaCounters, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            swept = await counters.sweep(older_than_seconds=interval)
            if swept:
                log.info("applied quota deltas left by a crash", extra={"batches": swept})
        except Exception as exc:
            log.warning("quota sweep failed; it runs again", extra={"error": str(exc)})


@contextlib.asynccontextmanager
async def background(resources: Resources, env: Env, registry: CollectorRegistry) -> AsyncIterator[None]:
    """The usage consumer and the quota sweeper, from start-up until the server has stopped."""
    refusals = quota_refusals_counter(SPEC.name, registry, TIER_NAMES.values(), METER_NAMES.values())
    quotas = _built.pop(id(resources))
    quotas.on_refused = lambda tier, meter: refusals.labels(SPEC.name, tier, meter).inc()
    settings = MeteringSettings.from_env(env)
    kafka_settings = KafkaSettings.from_env(env)
    if resources.producer is None:
        raise RuntimeError("the metering service needs its kafka dependency in the registry")
    await kafka.ensure_topics(kafka_settings, [settings.dead_letter_topic])
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_settings.bootstrap_servers, enable_auto_commit=False)
    await reader.start()
    counters = _counters(resources, env)
    sweeper = asyncio.create_task(_sweep(counters, settings.sweep_interval_seconds), name="quota-sweeper")
    try:
        publisher = DeadLetterPublisher(
            resources.require_db(),
            resources.producer,
            reader,
            kafka_settings.usage_topic,
            settings.dead_letter_topic,
        )
        await publisher.start()
        sink = UsageSink(resources.require_db(), publisher, counters, kafka_settings.usage_topic)
        loop = ConsumerLoop(
            ConsumerSettings(
                bootstrap_servers=kafka_settings.bootstrap_servers,
                topic=kafka_settings.usage_topic,
                group_id=settings.consumer_group,
                max_batch=settings.batch_max_records,
                linger_ms=settings.batch_linger_ms,
                max_in_flight=settings.batches_in_flight,
                poll_timeout_ms=settings.poll_timeout_ms,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
            ),
            sink,
            ConsumerMetrics(SPEC.name, registry),
        )
        async with running(loop):
            yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await reader.stop()
        await asyncio.gather(quotas.close(), counters.counted.close())


def method_scopes() -> dict[str, str]:
    descriptor = pb.DESCRIPTOR.services_by_name["MeteringService"]
    scopes = {"SetPlan": ADMIN_SCOPE, "Reserve": WRITE_SCOPE, "Commit": WRITE_SCOPE, "Release": WRITE_SCOPE}
    return {f"/{descriptor.full_name}/{m.name}": scopes.get(m.name, READ_SCOPE) for m in descriptor.methods}


DEFINITION = ServiceDefinition(
    spec=SPEC,
    register=register,
    migrations_dir=Path(__file__).parent / "migrations",
    method_scopes=method_scopes(),
    background=background,
)
