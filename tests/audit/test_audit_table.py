"""The audit table itself, on a real Postgres: append-only (UPDATE, DELETE and TRUNCATE refused by
the database), a row written inside a rolled-back transaction is gone with it, and a dedupe key
writes its action once however often it is recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from macp.common.v1 import principal_pb2

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.context import request_id_var

pytestmark = pytest.mark.integration

AGENT = principal_pb2.Actor(type=principal_pb2.ACTOR_TYPE_AGENT, id="agent-1", client_id="orchestrator")
WHO = Who(tenant_id="acme", subject="user-1", actor_chain=(AGENT,), client_id="app")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as opened:
        await audit.apply_schema(opened)
        await audit.apply_schema(opened)  # a second service starting applies nothing twice
        yield opened


async def count(pool: asyncpg.Pool) -> int:
    counted: int = await pool.fetchval("SELECT count(*) FROM audit_events")
    return counted


async def test_rows_are_written_as_given_and_never_changed(pool: asyncpg.Pool) -> None:
    token = request_id_var.set("req-1")
    try:
        assert await audit.record(
            pool, AuditEvent(WHO, audit.AGENT_CREATE, "agent/a1", detail={"name": "Ada"})
        )
    finally:
        request_id_var.reset(token)
    row = await pool.fetchrow("SELECT * FROM audit_events")
    assert (row["tenant_id"], row["subject"], row["client_id"]) == ("acme", "user-1", "app")
    assert (row["action"], row["resource"], row["outcome"]) == ("agent.create", "agent/a1", "success")
    # No correlation id came with the call: the request id stands in for it.
    assert (row["request_id"], row["correlation_id"]) == ("req-1", "req-1")
    assert json.loads(row["actor_chain"]) == [{"type": "agent", "id": "agent-1", "client_id": "orchestrator"}]

    for statement in (
        "UPDATE audit_events SET outcome = 'denied'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute(statement)
    assert await count(pool) == 1
    assert (await pool.fetchval("SELECT outcome FROM audit_events")) == "success"


async def test_a_rolled_back_action_leaves_no_row(pool: asyncpg.Pool) -> None:
    class Failed(Exception):
        pass

    async def failing_action() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await audit.record(conn, AuditEvent(WHO, audit.AGENT_DELETE, "agent/a1"))
            raise Failed

    with pytest.raises(Failed):
        await failing_action()
    assert await count(pool) == 0


async def test_a_dedupe_key_writes_its_action_once(pool: asyncpg.Pool) -> None:
    def refusal() -> AuditEvent:
        return AuditEvent(
            WHO, audit.QUOTA_REFUSE, "reservation/r1", outcome=audit.DENIED, dedupe_key="quota.refuse:acme:r1"
        )

    assert await audit.record(pool, refusal())
    assert not await audit.record(pool, refusal())
    assert await count(pool) == 1


def test_an_unknown_action_or_outcome_is_refused_before_it_is_written() -> None:
    with pytest.raises(ValueError, match=r"agent\.rename"):
        AuditEvent(WHO, "agent.rename", "agent/a1")
    with pytest.raises(ValueError, match="maybe"):
        AuditEvent(WHO, audit.AGENT_CREATE, "agent/a1", outcome="maybe")


async def test_one_statement_writes_the_row_only_if_its_write_happened(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE widgets (id text PRIMARY KEY, name text NOT NULL)")
    sql, args = audit.with_audit(
        "INSERT INTO widgets (id, name) VALUES ($1, $2) RETURNING *",
        ["w1", "one"],
        AuditEvent(WHO, audit.AGENT_CREATE, "agent/w1"),
    )
    row = await pool.fetchrow(sql, *args)
    assert (row["id"], row["name"]) == ("w1", "one")
    missed, missed_args = audit.with_audit(
        "UPDATE widgets SET name = $2 WHERE id = $1 RETURNING *",
        ["w2", "two"],
        AuditEvent(WHO, audit.AGENT_UPDATE, "agent/w2"),
    )
    assert await pool.fetchrow(missed, *missed_args) is None
    assert [r["resource"] for r in await pool.fetch("SELECT resource FROM audit_events")] == ["agent/w1"]
    # A write that fails takes its audit row with it: one statement, one outcome.
    again, again_args = audit.with_audit(
        "INSERT INTO widgets (id, name) VALUES ($1, $2) RETURNING *",
        ["w1", "again"],
        AuditEvent(WHO, audit.AGENT_CREATE, "agent/w1"),
    )
    with pytest.raises(asyncpg.UniqueViolationError, match="widgets_pkey"):
        await pool.fetchrow(again, *again_args)
    assert await count(pool) == 1
