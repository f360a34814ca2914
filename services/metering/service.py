"""Wiring of the metering service: its registry entry, its start hook, its migrations, its scopes.

Scopes: every call needs a token for `urn:macp:service:metering`; the reads (CheckQuota, GetUsage,
GetInvoicePreview, GetPlan) also need `usage:read`; holding and settling budget (Reserve, Commit,
Release and the batch forms ReserveHolds, CommitHolds) needs `usage:write`, which the services
running turns hold; SetPlan needs `macp:admin`, since a tenant does not choose its own price.

`start` builds the quotas (their refusals counted in the served metrics registry), adds the
servicer, and runs beside the RPCs the usage topic's consumer (one member of the consumer group
every metering process joins) and the sweeper that applies quota deltas a crash left behind; it
stops them after the server has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from macp.metering.v1 import metering_service_pb2 as pb
from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc

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
from services.metering.tenant_tiers import TenantTiers
from services.metering.usage import UsageReports
from services.runtime import kafka
from services.runtime.consumer import ConsumerLoop, ConsumerSettings, running
from services.runtime.metrics import ConsumerMetrics, quota_refusals_counter
from services.runtime.registry import service
from services.runtime.server import ServiceContext, ServiceDefinition

log = logging.getLogger("macp.metering")

READ_SCOPE = "usage:read"
WRITE_SCOPE = "usage:write"
SPEC = service("metering")


async def _sweep(counters: QuotaCounters, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            swept = await counters.sweep(older_than_seconds=interval)
            if swept:
                log.info("applied quota deltas left by a crash", extra={"batches": swept})
        except Exception as exc:
            log.warning("quota sweep failed; it runs again", extra={"error": str(exc)})


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def start(context: ServiceContext) -> AsyncIterator[None]:
    resources, registry = context.resources, context.registry
    settings = MeteringSettings.from_env(context.env)
    kafka_settings = resources.settings.kafka
    if kafka_settings is None or resources.producer is None:
        raise RuntimeError("the metering service needs its kafka dependency in the registry")
    pool = resources.require_db()
    plans = Plans(PlanStore(pool))
    # One set of counters for the RPCs, the consumer's sink and the sweeper: their only state is
    # the batch of counted deltas waiting to be deleted, and one batch means fewer DELETEs.
    counters = QuotaCounters(resources.require_redis(), resources.redis_key_prefix, pool, plans)
    quotas = Quotas(counters, settings.reservation_ttl_seconds)
    refusals = quota_refusals_counter(SPEC.name, registry, TIER_NAMES.values(), METER_NAMES.values())
    quotas.on_refused = lambda tier, meter: refusals.labels(SPEC.name, tier, meter).inc()
    servicer = MeteringServicer(
        quotas,
        plans,
        UsageReports(UsageStore(pool), plans),
        Invoices(UsageStore(pool), plans, utc_now),
        QuotaRefusals(pool),
        TenantTiers(pool),
    )
    pb_grpc.add_MeteringServiceServicer_to_server(servicer, context.server)
    # Stopped last in, first out: the consumer, the sweeper, the reader, and last the counted
    # deltas still waiting (what the Commits and the consumer counted until then); a step that
    # never began is not stopped, one that did is, even if a later one failed to start.
    async with contextlib.AsyncExitStack() as work:
        work.push_async_callback(quotas.close)
        await kafka.ensure_topics(kafka_settings, [settings.dead_letter_topic])
        reader = AIOKafkaConsumer(
            bootstrap_servers=kafka_settings.bootstrap_servers, enable_auto_commit=False
        )
        await reader.start()
        work.push_async_callback(reader.stop)
        sweeper = asyncio.create_task(_sweep(counters, settings.sweep_interval_seconds), name="quota-sweeper")
        work.push_async_callback(_cancel, sweeper)
        publisher = DeadLetterPublisher(
            pool, resources.producer, reader, kafka_settings.usage_topic, settings.dead_letter_topic
        )
        await publisher.start()
        sink = UsageSink(pool, publisher, counters, kafka_settings.usage_topic)
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
        await work.enter_async_context(running(loop))
        yield


def method_scopes() -> dict[str, str]:
    descriptor = pb.DESCRIPTOR.services_by_name["MeteringService"]
    scopes = {"SetPlan": ADMIN_SCOPE} | {
        name: WRITE_SCOPE for name in ("Reserve", "Commit", "Release", "ReserveHolds", "CommitHolds")
    }
    return {f"/{descriptor.full_name}/{m.name}": scopes.get(m.name, READ_SCOPE) for m in descriptor.methods}


DEFINITION = ServiceDefinition(
    spec=SPEC,
    start=start,
    own_settings=MeteringSettings.from_env,
    migrations_dir=Path(__file__).parent / "migrations",
    method_scopes=method_scopes(),
)
