"""Postgres: the asyncpg pool and the one migration mechanism every service uses.

Migrations are `NNNN_description.sql` files in a service's `migrations/` folder, applied at start-up
in version order inside one transaction that holds a Postgres advisory lock, so two processes
starting at once apply each migration exactly once and never see a half-migrated schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.runtime.settings import PostgresSettings

log = logging.getLogger("macp.db")

# One fixed key for every component: migrations are rare and quick, so serialising all of them
# costs nothing and rules out any interleaving of two components' DDL.
_MIGRATION_LOCK_KEY = 0x6D616370  # "macp"
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class MigrationError(RuntimeError):
    """A migration file is misnamed, duplicated, or was edited after it was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path}: version {version} is used by {migrations[version].name} too")
        migrations[version] = Migration(version, match.group(2), path.read_text())
    return [migrations[v] for v in sorted(migrations)]


async def apply_migrations(pool: asyncpg.Pool, component: str, directory: Path) -> list[int]:
    """Apply `component`'s pending migrations; returns the versions this call applied."""
    migrations = load_migrations(directory)
    applied_now: list[int] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS macp_schema_migrations (
                component  text        NOT NULL,
                version    integer     NOT NULL,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (component, version)
            )
            """
        )
        rows = await conn.fetch(
            "SELECT version, checksum FROM macp_schema_migrations WHERE component = $1", component
        )
        done = {row["version"]: row["checksum"] for row in rows}
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"{component} migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead of editing an applied one"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO macp_schema_migrations (component, version, name, checksum)"
                " VALUES ($1, $2, $3, $4)",
                component,
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.version)
    if applied_now:
        log.info("migrations applied", extra={"component": component, "versions": applied_now})
    return applied_now


async def _keep_session(connection: asyncpg.Connection) -> None:
    """A released connection's reset: nothing beyond what asyncpg always does (it rolls back a
    transaction left open). asyncpg's default sends `RESET ALL; UNLISTEN *; CLOSE ALL;
    SELECT pg_advisory_unlock_all()`, one more round trip after every pooled query, for session
    state no service keeps: settings are per transaction (SET LOCAL), advisory locks are
    transaction locks (pg_advisory_xact_lock), and nothing LISTENs or holds a cursor."""


async def create_pool(settings: PostgresSettings) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn=settings.url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        reset=_keep_session,
    )
    return pool
