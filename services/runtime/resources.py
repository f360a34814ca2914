"""The connections a service holds (Postgres, Redis, Kafka, S3), opened from its declared dependencies.

A service lists what it depends on in the registry; `open_resources` connects exactly those,
applies the service's migrations, and `check` tells the health service whether each still answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from services.runtime import audit, db, kafka, s3
from services.runtime.readiness import Failing
from services.runtime.redis_client import create_redis
from services.runtime.settings import Env, KafkaSettings, PostgresSettings, RedisSettings, S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("macp.resources")

T = TypeVar("T")

KNOWN_DEPENDENCIES = ("postgres", "redis", "kafka", "s3")
# A dependency that does not answer a ping in this long counts as a timed-out check.
DEPENDENCY_PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class ResourceSettings:
    """The settings of each declared dependency; None for one the service does not use."""

    postgres: PostgresSettings | None
    redis: RedisSettings | None
    kafka: KafkaSettings | None
    s3: S3Settings | None

    @classmethod
    def from_env(cls, env: Env, dependencies: tuple[str, ...]) -> ResourceSettings:
        unknown = set(dependencies) - set(KNOWN_DEPENDENCIES)
        if unknown:
            raise ValueError(f"unknown dependencies {sorted(unknown)}; known: {KNOWN_DEPENDENCIES}")
        return cls(
            postgres=PostgresSettings.from_env(env) if "postgres" in dependencies else None,
            redis=RedisSettings.from_env(env) if "redis" in dependencies else None,
            kafka=KafkaSettings.from_env(env) if "kafka" in dependencies else None,
            s3=S3Settings.from_env(env) if "s3" in dependencies else None,
        )


@dataclass
class Resources:
    """The open connections of one service process.

    They hold no clean-up list for what a service builds on top of them: a service's start hook
    (services/runtime/server.py) stops its own work when it is left, which the server does after
    the gRPC server has stopped and before it closes these, so one hook owns both ends.
    """

    settings: ResourceSettings
    db: asyncpg.Pool | None = None
    redis: aioredis.Redis | None = None
    producer: AIOKafkaProducer | None = None
    s3: S3Client | None = None
    # The S3 probe's own thread (see `check`).
    _probe_thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="s3-probe"), repr=False
    )

    @property
    def redis_key_prefix(self) -> str:
        """What every Redis key of this deployment starts with (MACP_REDIS_KEY_PREFIX), so that
        several deployments can share one Redis: the one place a service reads it."""
        if self.settings.redis is None:
            raise RuntimeError("this service does not declare a redis dependency in the registry")
        return self.settings.redis.key_prefix

    def require_db(self) -> asyncpg.Pool:
        if self.db is None:
            raise RuntimeError("this service does not declare a postgres dependency in the registry")
        return self.db

    def require_redis(self) -> aioredis.Redis:
        if self.redis is None:
            raise RuntimeError("this service does not declare a redis dependency in the registry")
        return self.redis

    def require_s3(self) -> tuple[S3Client, S3Settings]:
        """The S3 client and its settings (the bucket, created at start-up if it was missing)."""
        if self.s3 is None or self.settings.s3 is None:
            raise RuntimeError("this service does not declare an s3 dependency in the registry")
        return self.s3, self.settings.s3

    async def check(self) -> Failing:
        """The dependencies that do not answer right now (empty when all do); those that only
        timed out are `silent` (services/runtime/readiness.py: slow is not down)."""
        failing: list[str] = []
        timed_out: list[str] = []

        async def probe(name: str, ping: Awaitable[object]) -> None:
            try:
                await asyncio.wait_for(ping, timeout=DEPENDENCY_PROBE_SECONDS)
            except TimeoutError:
                failing.append(name)
                timed_out.append(name)
            except Exception:
                failing.append(name)

        probes = []
        if self.db is not None:
            probes.append(probe("postgres", self.db.fetchval("SELECT 1")))
        if self.redis is not None:
            probes.append(probe("redis", self.redis.ping()))
        if self.producer is not None:
            probes.append(probe("kafka", self.producer.client.fetch_all_metadata()))
        if self.s3 is not None and self.settings.s3 is not None:
            bucket = self.settings.s3.bucket
            # A thread of its own: the default pool may be busy with other work (a slow name
            # lookup, a large upload), and the probe must not wait behind it to be counted down.
            loop = asyncio.get_running_loop()
            head = functools.partial(self.s3.head_bucket, Bucket=bucket)
            probes.append(probe("s3", loop.run_in_executor(self._probe_thread, head)))
        await asyncio.gather(*probes)
        return Failing(failing, silent=timed_out)

    async def close(self) -> None:
        if self.producer is not None:
            # Flushes what is buffered before the process exits, for a few seconds at most.
            await kafka.stop_producer(self.producer)
        if self.redis is not None:
            await self.redis.aclose()
        if self.db is not None:
            await self.db.close()
        self._probe_thread.shutdown(wait=False, cancel_futures=True)
        if self.s3 is not None:
            self.s3.close()


async def _retry(name: str, attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Await `attempt()` until it succeeds or `deadline` (loop time) passes."""
    loop = asyncio.get_running_loop()
    delay = 0.2
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if loop.time() + delay > deadline:
                raise ConnectionError(f"{name} did not answer in time: {exc}") from exc
            log.warning("waiting for dependency", extra={"dependency": name, "error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def open_resources(
    settings: ResourceSettings,
    *,
    component: str,
    migrations_dir: Path | None,
    topics: list[str],
    wait_seconds: float,
) -> Resources:
    """Connect every declared dependency (waiting up to `wait_seconds` for each to come up)."""
    deadline = asyncio.get_running_loop().time() + wait_seconds
    resources = Resources(settings=settings)
    try:
        if settings.postgres is not None:
            pg = settings.postgres
            resources.db = await _retry("postgres", lambda: db.create_pool(pg), deadline)
            if migrations_dir is not None:
                await db.apply_migrations(resources.require_db(), component, migrations_dir)
                # Every service that owns tables may write audit rows in its own transactions.
                await audit.apply_schema(resources.require_db())
        if settings.redis is not None:
            resources.redis = create_redis(settings.redis)
            await _retry("redis", resources.redis.ping, deadline)
        if settings.kafka is not None:
            kafka_settings = settings.kafka
            if topics:
                await _retry("kafka", lambda: kafka.ensure_topics(kafka_settings, topics), deadline)
            resources.producer = await _retry("kafka", lambda: kafka.start_producer(kafka_settings), deadline)
        if settings.s3 is not None:
            s3_settings = settings.s3
            resources.s3 = s3.create_s3_client(s3_settings)
            client = resources.s3
            await _retry(
                "s3", lambda: asyncio.to_thread(s3.ensure_bucket, client, s3_settings.bucket), deadline
            )
    except BaseException:
        await resources.close()
        raise
    return resources
