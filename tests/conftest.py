"""Fixtures shared by the whole suite: real infrastructure started once per test session, and
per-test isolation inside it (a database of its own, a Redis key prefix, a Kafka topic).

Nothing here is mocked: Postgres, Redis, Kafka (tansu), S3 (moto's server) and Envoy are the real
processes `macp up` runs, on free ports in a scratch directory.
"""

from __future__ import annotations

import gc
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from services.stack.infra import Infrastructure, ephemeral_infrastructure
from tests.leftovers import close_leftovers

if TYPE_CHECKING:
    from tests.world import World


def pytest_collection_finish(session: pytest.Session) -> None:
    """Moves every object alive after collection (test modules, their fixtures and strategies, the
    generated protos) out of the garbage collector's reach. The services a test starts run in this
    process and its event loop, so a full collection walking every long-lived object of the
    suite pauses all of them at once: under a loaded machine, long enough for their health checks
    to time out. Frozen objects are never freed, which is what they were going to be anyway."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
async def close_leftovers_before_the_loop() -> AsyncIterator[None]:
    """Closes what tests left open while the session's loop still runs (see tests/leftovers.py)."""
    yield
    await close_leftovers()


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    with ephemeral_infrastructure() as infra:
        yield infra


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@asynccontextmanager
async def fresh_database(infrastructure: Infrastructure) -> AsyncIterator[str]:
    """The URL of a new, empty database on the session's Postgres, dropped when the block ends."""
    admin_url = infrastructure.env["MACP_DATABASE_URL"]
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(admin_url, name)
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(infrastructure: Infrastructure) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    async with fresh_database(infrastructure) as url:
        yield url


def isolated_environ(infrastructure: Infrastructure, database_url: str) -> dict[str, str]:
    """The environment one service process reads, isolated from every other test's state."""
    unique = uuid.uuid4().hex[:8]
    return {
        **infrastructure.env,
        "MACP_DATABASE_URL": database_url,
        "MACP_REDIS_KEY_PREFIX": f"test:{unique}:",
        "MACP_KAFKA_USAGE_TOPIC": f"test.usage.{unique}",
        "MACP_KAFKA_TOPIC_PARTITIONS": "1",
        "MACP_S3_BUCKET": f"test-{unique}",
        "MACP_SHUTDOWN_GRACE_SECONDS": "2",
        "MACP_LOG_LEVEL": "warning",
        "MACP_ORCHESTRATOR_SEALING_KEY": secrets.token_urlsafe(32),
        "MACP_TOOL_GATEWAY_SEALING_KEY": secrets.token_urlsafe(32),
    }


@pytest.fixture
def service_environ(infrastructure: Infrastructure, database_url: str) -> dict[str, str]:
    """The environment one service process reads, isolated from every other test's state."""
    return isolated_environ(infrastructure, database_url)


@pytest.fixture(scope="module")
async def module_environ(infrastructure: Infrastructure) -> AsyncIterator[dict[str, str]]:
    """`service_environ` for a stack the tests of one module share (`module_world`, `module_slice`),
    over a database of the module's own."""
    async with fresh_database(infrastructure) as url:
        yield isolated_environ(infrastructure, url)


@pytest.fixture
async def world(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[World]:
    """The whole mesh (tests/world.py): every service, the edge and Envoy, a seeded tenant."""
    from tests.world import running_world  # imports every service: only for tests that use it

    async with running_world(service_environ, tmp_path) as world:
        yield world


@pytest.fixture(scope="module")
async def module_world(
    module_environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """The whole mesh once for a module whose tests need no mesh of their own: each takes a tenant
    of its own on it with `World.other_tenant()` (see `tests/world.py`)."""
    from tests.world import running_world

    async with running_world(module_environ, tmp_path_factory.mktemp("world")) as world:
        yield world
