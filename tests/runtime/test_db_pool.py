"""The shared Postgres pool hands every acquirer a clean connection, though a release sends no reset
query: what a caller left behind (an open or failed transaction) is gone, and nothing else lingers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.runtime.db import create_pool
from services.runtime.settings import PostgresSettings


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of exactly one connection, so every acquire gets the connection the last one left."""
    pool = await create_pool(PostgresSettings(url=database_url, pool_min_size=1, pool_max_size=1))
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_transaction_left_open_is_rolled_back_before_the_next_acquirer(
    one_connection: asyncpg.Pool,
) -> None:
    async with one_connection.acquire() as conn:
        await conn.execute("CREATE TABLE kept (n int)")
    async with one_connection.acquire() as conn:
        await conn.execute("BEGIN")  # unmanaged: the caller forgot to end it
        await conn.execute("INSERT INTO kept VALUES (1)")
    async with one_connection.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM kept") == 0
        await conn.execute("INSERT INTO kept VALUES (2)")  # autocommits: no transaction is open
    assert await one_connection.fetchval("SELECT count(*) FROM kept") == 1


async def test_a_failed_transaction_leaves_a_usable_connection(one_connection: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with one_connection.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 / 0")
    assert await one_connection.fetchval("SELECT 41 + 1") == 42


async def test_transaction_scoped_settings_and_locks_end_with_their_transaction(
    one_connection: asyncpg.Pool,
) -> None:
    """What the services use instead of session state (see `_keep_session`) does not outlive the
    transaction, so no reset query is needed to clear it."""
    async with one_connection.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = '1234ms'")
        await conn.execute("SELECT pg_advisory_xact_lock(7)")
    async with one_connection.acquire() as conn:
        assert await conn.fetchval("SHOW statement_timeout") != "1234ms"
        locks = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert locks == 0


# What would need the reset query back: session-level settings, advisory locks, LISTEN, held cursors.
_SESSION_STATE = re.compile(
    r"""["']\s*SET\s+(?!LOCAL\b)|pg_advisory_lock(_shared)?\(|\bLISTEN\s|add_listener\(|WITH HOLD|"""
    r"""set_config\([^)]*false\)"""  # SQL keywords are upper case here; prose says "set it"
)


def test_no_service_keeps_session_state_on_a_pooled_connection() -> None:
    """The pool's release sends no reset query (`_keep_session`): that holds only while no
    service's SQL leaves session state behind. A statement that does fails this test, and
    with it the choice to drop the reset."""
    services = Path(__file__).resolve().parents[2] / "services"
    found = [
        f"{path.relative_to(services.parent)}:{number}: {line.strip()}"
        for path in sorted(services.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if _SESSION_STATE.search(line)
    ]
    assert found == []
