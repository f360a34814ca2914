"""`open_resources` against the real Postgres, Redis, Kafka and S3: exactly the declared dependencies,
topics and buckets made ready, health probes, a producer that delivers, and a close that closes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ProducerClosed

from services.runtime.redis_client import create_redis
from services.runtime.resources import KNOWN_DEPENDENCIES, Resources, ResourceSettings, open_resources
from services.runtime.server import usage_topics
from services.runtime.settings import Env
from services.stack.config import free_port
from services.stack.infra import Infrastructure

pytestmark = pytest.mark.integration

# The variables each dependency reads; a test leaves out those of the dependencies it does not declare.
VARIABLE_PREFIXES = {
    "postgres": "MACP_DATABASE_",
    "redis": "MACP_REDIS_",
    "kafka": "MACP_KAFKA_",
    "s3": "MACP_S3_",
}


def handles(resources: Resources) -> dict[str, object | None]:
    return {
        "postgres": resources.db,
        "redis": resources.redis,
        "kafka": resources.producer,
        "s3": resources.s3,
    }


async def opened(environ: dict[str, str], dependencies: tuple[str, ...], **kwargs: object) -> Resources:
    settings = ResourceSettings.from_env(Env(environ), dependencies)
    migrations_dir = kwargs.get("migrations_dir")
    assert migrations_dir is None or isinstance(migrations_dir, Path)
    return await open_resources(
        settings,
        component="resources-test",
        migrations_dir=migrations_dir,
        topics=usage_topics(settings),
        wait_seconds=15,
    )


async def consume_all(bootstrap: str, topic: str, wanted: int, within: float = 15) -> list[bytes]:
    """Every value on `topic` from the earliest offset, once at least `wanted` have arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # The broker holds a new group's first join for half the session timeout (5 s by default).
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + within
        while len(values) < wanted and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            values += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    return values


@pytest.fixture
async def every_resource(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[Resources]:
    (tmp_path / "0001_create_things.sql").write_text("CREATE TABLE things (id int);")
    resources = await opened(service_environ, KNOWN_DEPENDENCIES, migrations_dir=tmp_path)
    try:
        yield resources
    finally:
        await resources.close()


@pytest.mark.parametrize("dependency", KNOWN_DEPENDENCIES)
async def test_only_the_declared_dependency_is_read_and_connected(
    service_environ: dict[str, str], dependency: str
) -> None:
    # Without the other dependencies' settings: reading one of them would fail with SettingsError.
    others = tuple(prefix for name, prefix in VARIABLE_PREFIXES.items() if name != dependency)
    environ = {key: value for key, value in service_environ.items() if not key.startswith(others)}
    resources = await opened(environ, (dependency,))
    try:
        connected = {name for name, handle in handles(resources).items() if handle is not None}
        assert connected == {dependency}
        assert await resources.check() == frozenset()
    finally:
        await resources.close()


async def test_every_dependency_is_connected_and_answers(every_resource: Resources) -> None:
    assert all(handle is not None for handle in handles(every_resource).values())
    assert await every_resource.check() == frozenset()
    assert await every_resource.require_db().fetchval("SELECT count(*) FROM things") == 0
    assert await every_resource.require_redis().ping()


async def test_the_usage_topic_is_created(every_resource: Resources, service_environ: dict[str, str]) -> None:
    kafka = every_resource.settings.kafka
    assert kafka is not None
    assert kafka.usage_topic == service_environ["MACP_KAFKA_USAGE_TOPIC"]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        assert kafka.usage_topic in await admin.list_topics()
    finally:
        await admin.close()


async def test_the_bucket_is_created(every_resource: Resources, service_environ: dict[str, str]) -> None:
    client = every_resource.s3
    assert client is not None
    bucket = service_environ["MACP_S3_BUCKET"]
    listed = await asyncio.to_thread(client.list_buckets)
    assert bucket in [entry.get("Name") for entry in listed.get("Buckets", [])]
    await asyncio.to_thread(client.put_object, Bucket=bucket, Key="probe.txt", Body=b"kept")
    stored = await asyncio.to_thread(client.get_object, Bucket=bucket, Key="probe.txt")
    assert stored["Body"].read() == b"kept"


async def test_the_producer_delivers(every_resource: Resources) -> None:
    kafka = every_resource.settings.kafka
    assert kafka is not None
    assert every_resource.producer is not None
    value = uuid.uuid4().bytes
    await every_resource.producer.send_and_wait(kafka.usage_topic, value, key=b"tenant")
    assert await consume_all(kafka.bootstrap_servers, kafka.usage_topic, 1) == [value]


async def test_check_names_a_dependency_that_does_not_answer(service_environ: dict[str, str]) -> None:
    environ = {**service_environ, "MACP_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    settings = ResourceSettings.from_env(Env(environ), ("redis",))
    assert settings.redis is not None
    resources = Resources(settings=settings, redis=create_redis(settings.redis))
    try:
        failing = await resources.check()
        assert failing == frozenset({"redis"})
        assert failing.silent == frozenset(), "a refused connection is down, not slow"
    finally:
        await resources.close()


async def test_close_flushes_the_producer_and_closes_every_connection(
    infrastructure: Infrastructure, service_environ: dict[str, str], database_url: str
) -> None:
    resources = await opened(service_environ, KNOWN_DEPENDENCIES)
    kafka = resources.settings.kafka
    assert kafka is not None
    assert resources.producer is not None
    redis_client_id = await resources.require_redis().client_id()
    assert await resources.require_db().fetchval("SELECT 1") == 1

    # Sent but not awaited: close() must not drop what the producer still holds.
    value = uuid.uuid4().bytes
    await resources.producer.send(kafka.usage_topic, value)
    await resources.close()

    assert await consume_all(kafka.bootstrap_servers, kafka.usage_topic, 1) == [value]
    with pytest.raises(ProducerClosed):
        await resources.producer.send(kafka.usage_topic, b"after close")
    assert resources.require_db().is_closing()
    database = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(infrastructure.env["MACP_DATABASE_URL"])
    observer = aioredis.from_url(service_environ["MACP_REDIS_URL"])
    try:
        for _ in range(50):
            backends = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
            )
            clients = {entry["id"] for entry in await observer.client_list()}
            if backends == 0 and str(redis_client_id) not in clients:
                break
            await asyncio.sleep(0.1)
        assert backends == 0
        assert str(redis_client_id) not in clients
    finally:
        await admin.close()
        await observer.aclose()
