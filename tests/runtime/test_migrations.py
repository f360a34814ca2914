"""Migrations against a real Postgres: order, records, idempotence, concurrency, and refusals."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from services.runtime.db import MigrationError, apply_migrations, create_pool
from services.runtime.settings import PostgresSettings

pytestmark = pytest.mark.integration

OpenPool = Callable[[], AbstractAsyncContextManager[asyncpg.Pool]]


@pytest.fixture
def open_pool(database_url: str) -> OpenPool:
    """Opens a pool of its own on the test's database (each use is a separate client, like a process)."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[asyncpg.Pool]:
        pool = await create_pool(PostgresSettings(url=database_url, pool_min_size=1, pool_max_size=2))
        try:
            yield pool
        finally:
            await pool.close()

    return opened


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    return directory


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql)
    return path


async def records(pool: asyncpg.Pool, component: str = "widgets") -> list[tuple[int, str, str]]:
    rows = await pool.fetch(
        "SELECT version, name, checksum FROM macp_schema_migrations WHERE component = $1 ORDER BY version",
        component,
    )
    return [(row["version"], row["name"], row["checksum"]) for row in rows]


async def exists(pool: asyncpg.Pool, table: str) -> bool:
    found: bool = await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_text().encode()).hexdigest()


async def test_migrations_apply_in_version_order_and_are_recorded(
    open_pool: OpenPool, migrations: Path
) -> None:
    # Each one needs the one before it, and 0010 sorts after 0002 only as a number.
    files = [
        write(migrations, "0010_seed_widgets.sql", "INSERT INTO widgets (name, colour) VALUES ('w', 'red');"),
        write(migrations, "0001_create_widgets.sql", "CREATE TABLE widgets (name text PRIMARY KEY);"),
        write(migrations, "0002_add_colour.sql", "ALTER TABLE widgets ADD COLUMN colour text NOT NULL;"),
    ]
    async with open_pool() as pool:
        assert await apply_migrations(pool, "widgets", migrations) == [1, 2, 10]
        assert await pool.fetch("SELECT name, colour FROM widgets") == [("w", "red")]
        assert await records(pool) == [
            (1, "create_widgets", sha256(files[1])),
            (2, "add_colour", sha256(files[2])),
            (10, "seed_widgets", sha256(files[0])),
        ]


async def test_applying_again_is_a_no_op_and_only_new_migrations_run(
    open_pool: OpenPool, migrations: Path
) -> None:
    write(migrations, "0001_create_widgets.sql", "CREATE TABLE widgets (name text PRIMARY KEY);")
    write(migrations, "0002_seed.sql", "INSERT INTO widgets VALUES ('first');")
    async with open_pool() as pool:
        assert await apply_migrations(pool, "widgets", migrations) == [1, 2]
        before = await records(pool)
        assert await apply_migrations(pool, "widgets", migrations) == []
        assert await records(pool) == before
        assert await pool.fetchval("SELECT count(*) FROM widgets") == 1

        write(migrations, "0003_seed_more.sql", "INSERT INTO widgets VALUES ('second');")
        assert await apply_migrations(pool, "widgets", migrations) == [3]
        assert await pool.fetchval("SELECT count(*) FROM widgets") == 2


async def test_components_keep_their_own_versions(open_pool: OpenPool, tmp_path: Path) -> None:
    for component in ("alpha", "beta"):
        directory = tmp_path / component
        directory.mkdir()
        write(directory, "0001_create.sql", f"CREATE TABLE {component}_things (id int);")
    async with open_pool() as pool:
        assert await apply_migrations(pool, "alpha", tmp_path / "alpha") == [1]
        assert await apply_migrations(pool, "beta", tmp_path / "beta") == [1]
        assert [version for version, _, _ in await records(pool, "alpha")] == [1]
        assert [version for version, _, _ in await records(pool, "beta")] == [1]
        assert await exists(pool, "beta_things")


async def test_two_processes_migrating_at_once_apply_each_migration_exactly_once(
    open_pool: OpenPool, migrations: Path
) -> None:
    # The sleep keeps the first transaction open long enough for the second to arrive meanwhile.
    write(migrations, "0001_create_counter.sql", "CREATE TABLE counter (n int); SELECT pg_sleep(0.5);")
    write(migrations, "0002_count.sql", "INSERT INTO counter VALUES (1);")
    async with open_pool() as first, open_pool() as second:
        results = await asyncio.gather(
            apply_migrations(first, "widgets", migrations), apply_migrations(second, "widgets", migrations)
        )
        assert sorted(results) == [[], [1, 2]]
        assert await first.fetchval("SELECT count(*) FROM counter") == 1
        assert [version for version, _, _ in await records(first)] == [1, 2]


async def test_editing_an_applied_migration_is_refused_by_name(open_pool: OpenPool, migrations: Path) -> None:
    applied = write(migrations, "0001_create_widgets.sql", "CREATE TABLE widgets (name text);")
    async with open_pool() as pool:
        await apply_migrations(pool, "widgets", migrations)
        applied.write_text("CREATE TABLE widgets (name text, colour text);")
        write(migrations, "0002_seed.sql", "INSERT INTO widgets VALUES ('w');")
        with pytest.raises(
            MigrationError, match=r"^widgets migration 0001_create_widgets changed after it was applied"
        ):
            await apply_migrations(pool, "widgets", migrations)
        # Nothing after the refusal ran.
        assert [version for version, _, _ in await records(pool)] == [1]
        assert await pool.fetchval("SELECT count(*) FROM widgets") == 0


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["1_widgets.sql"], r"1_widgets\.sql: migration files are named NNNN_lower_snake\.sql"),
        (["0001-widgets.sql"], r"0001-widgets\.sql: migration files are named"),
        (["0001_Widgets.sql"], r"0001_Widgets\.sql: migration files are named"),
        (["0002_a.sql", "0002_b.sql"], r"0002_b\.sql: version 2 is used by a too"),
    ],
    ids=["short-version", "dash", "upper-case", "duplicate-version"],
)
async def test_a_misnamed_migration_file_is_refused_before_anything_runs(
    open_pool: OpenPool, migrations: Path, names: list[str], message: str
) -> None:
    write(migrations, "0001_create_widgets.sql", "CREATE TABLE widgets (name text);")
    for name in names:
        write(migrations, name, "SELECT 1;")
    async with open_pool() as pool:
        with pytest.raises(MigrationError, match=message):
            await apply_migrations(pool, "widgets", migrations)
        assert not await exists(pool, "widgets")
        assert not await exists(pool, "macp_schema_migrations")


async def test_a_failing_migration_rolls_back_completely(open_pool: OpenPool, migrations: Path) -> None:
    write(migrations, "0001_create_widgets.sql", "CREATE TABLE widgets (name text);")
    async with open_pool() as pool:
        assert await apply_migrations(pool, "widgets", migrations) == [1]

        write(migrations, "0002_create_gadgets.sql", "CREATE TABLE gadgets (name text);")
        write(
            migrations,
            "0003_broken.sql",
            "CREATE TABLE sprockets (name text); INSERT INTO widgets VALUES ('half'); SELECT 1 / 0;",
        )
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_migrations(pool, "widgets", migrations)

        # Neither the failing migration nor the one applied with it left anything behind.
        assert not await exists(pool, "sprockets")
        assert not await exists(pool, "gadgets")
        assert await pool.fetchval("SELECT count(*) FROM widgets") == 0
        assert [version for version, _, _ in await records(pool)] == [1]

        # Once fixed, the pending ones apply.
        write(migrations, "0003_broken.sql", "CREATE TABLE sprockets (name text);")
        assert await apply_migrations(pool, "widgets", migrations) == [2, 3]
