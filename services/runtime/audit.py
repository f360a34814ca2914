"""The audit log: every sensitive action, written once to the append-only `audit_events` table.

What a row holds is 004's audit record: when, the request id and correlation id, the tenant, the
subject (on whose behalf), the actor chain (who acted for them, most recent first), the client,
the action, the resource, the outcome.

Exactly once. Where the action is a Postgres write, its row is written atomically with it: in
the same statement when the action is one write (`with_audit`, a data-modifying CTE that adds the
row only if the write returned one), else on the action's connection inside its transaction
(`record(conn, event)`). A rolled-back action leaves no row, and a replayed one that changes
nothing (a second delete, a second revocation of the same token) writes none either. An action
outside Postgres (a quota refusal in Redis) is inserted on its own with a `dedupe_key`, its natural
key, so a retry of the same call cannot write it twice.

The table belongs to no one service: every service that writes rows applies the `audit` component's
migrations at start-up (`apply_schema`), and the migration lock makes whichever starts first create it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
from macp.common.v1 import principal_pb2

from services.runtime import db
from services.runtime.context import current_request_id
from services.runtime.paging import TimeKey
from services.runtime.principal import Principal

COMPONENT = "audit"
MIGRATIONS = Path(__file__).parent / "audit_migrations"
CORRELATION_ID_HEADER = "x-correlation-id"

SUCCESS = "success"
DENIED = "denied"

# The actions audited (the `action` column); ListAuditEvents filters by these names.
TOKEN_ISSUE = "token.issue"
TOKEN_EXCHANGE = "token.exchange"
TOKEN_REVOKE = "token.revoke"
CLIENT_REGISTER = "client.register"
AGENT_CREATE = "agent.create"
AGENT_UPDATE = "agent.update"
AGENT_DELETE = "agent.delete"
CONVERSATION_CREATE = "conversation.create"
CONVERSATION_UPDATE = "conversation.update"
CONVERSATION_DELETE = "conversation.delete"
CONVERSATION_ARCHIVE = "conversation.archive"
TOOL_SERVER_CREATE = "tool_server.create"
TOOL_SERVER_DELETE = "tool_server.delete"
WEBHOOK_CREATE = "webhook.create"
WEBHOOK_DELETE = "webhook.delete"
TOOL_CALL = "tool.call"
PLAN_SET = "plan.set"
QUOTA_REFUSE = "quota.refuse"
# Guessing limits (services/token/guessing.py): an account or client locked after failed attempts,
# and an attempt refused while locked.
AUTH_LOCKOUT = "auth.lockout"
AUTH_REFUSE = "auth.refuse"
# The token service's administration.
TENANT_CREATE = "tenant.create"
USER_CREATE = "user.create"
KEY_ROTATE = "key.rotate"
ACTIONS = (
    TOKEN_ISSUE,
    TOKEN_EXCHANGE,
    TOKEN_REVOKE,
    CLIENT_REGISTER,
    AGENT_CREATE,
    AGENT_UPDATE,
    AGENT_DELETE,
    CONVERSATION_CREATE,
    CONVERSATION_UPDATE,
    CONVERSATION_DELETE,
    CONVERSATION_ARCHIVE,
    TOOL_SERVER_CREATE,
    TOOL_SERVER_DELETE,
    WEBHOOK_CREATE,
    WEBHOOK_DELETE,
    TOOL_CALL,
    PLAN_SET,
    QUOTA_REFUSE,
    AUTH_LOCKOUT,
    AUTH_REFUSE,
    TENANT_CREATE,
    USER_CREATE,
    KEY_ROTATE,
)

ACTOR_TYPES = {
    principal_pb2.ACTOR_TYPE_USER: "user",
    principal_pb2.ACTOR_TYPE_AGENT: "agent",
    principal_pb2.ACTOR_TYPE_SERVICE: "service",
    principal_pb2.ACTOR_TYPE_CLIENT: "client",
}
_ACTOR_TYPE_VALUES = {name: value for value, name in ACTOR_TYPES.items()}

# The correlation id of the current call, where something upstream set one (a client's
# X-Correlation-ID carried as `x-correlation-id`); else the request id stands in for it, which the
# edge mints once and every hop repeats, so it already ties one client operation's rows together.
correlation_id_var: ContextVar[str | None] = ContextVar("macp_correlation_id", default=None)


def current_correlation_id() -> str:
    return correlation_id_var.get() or current_request_id() or ""


@dataclass(frozen=True)
class Who:
    """Who did it: the tenant, the subject on whose behalf, the actors between, the client used."""

    tenant_id: str
    subject: str
    actor_chain: tuple[principal_pb2.Actor, ...] = ()
    client_id: str = ""

    @classmethod
    def of(cls, principal: Principal) -> Who:
        """The caller of the current RPC: a user, else the client acting on its own behalf."""
        return cls(
            tenant_id=principal.tenant_id,
            subject=principal.user_id or principal.client_id,
            actor_chain=tuple(principal.actor_chain),
            client_id=principal.client_id,
        )


@dataclass(frozen=True)
class AuditEvent:
    """One row to write. The request and correlation ids are those of the call that builds it."""

    who: Who
    action: str
    resource: str
    outcome: str = SUCCESS
    detail: Mapping[str, str] = field(default_factory=dict)
    dedupe_key: str | None = None
    request_id: str = field(default_factory=lambda: current_request_id() or "")
    correlation_id: str = field(default_factory=current_correlation_id)

    def __post_init__(self) -> None:
        # Programming errors, caught by the tests of each hook rather than written as bad rows.
        if self.action not in ACTIONS:
            raise ValueError(f"audit action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.outcome not in (SUCCESS, DENIED):
            raise ValueError(f"audit outcome {self.outcome!r} is neither {SUCCESS} nor {DENIED}")


def actor_json(actor: principal_pb2.Actor) -> dict[str, str]:
    return {"type": ACTOR_TYPES.get(actor.type, "unspecified"), "id": actor.id, "client_id": actor.client_id}


def actor_of_json(item: Mapping[str, str]) -> principal_pb2.Actor:
    return principal_pb2.Actor(
        type=_ACTOR_TYPE_VALUES.get(item.get("type", ""), principal_pb2.ACTOR_TYPE_UNSPECIFIED),
        id=item.get("id", ""),
        client_id=item.get("client_id", ""),
    )


_COLUMNS = """
    (id, request_id, correlation_id, tenant_id, subject, actor_chain, client_id, action,
     resource, outcome, detail, dedupe_key)
"""


_TYPES = ("uuid", "text", "text", "text", "text", "jsonb", "text", "text", "text", "text", "jsonb", "text")


def _values(first: int) -> str:
    """One row's values, its parameters numbered from `first` and typed (an INSERT ... SELECT does
    not take its parameters' types from the columns as VALUES does)."""
    return ", ".join(f"${first + i}::{kind}" for i, kind in enumerate(_TYPES))


_INSERT = f"INSERT INTO audit_events {_COLUMNS} VALUES ({_values(1)}) ON CONFLICT (dedupe_key) DO NOTHING"


def _args(event: AuditEvent) -> list[object]:
    return [
        uuid.uuid4(),
        event.request_id,
        event.correlation_id,
        event.who.tenant_id,
        event.who.subject,
        json.dumps([actor_json(actor) for actor in event.who.actor_chain]),
        event.who.client_id,
        event.action,
        event.resource,
        event.outcome,
        json.dumps(dict(event.detail)),
        event.dedupe_key,
    ]


async def record(conn: asyncpg.Connection | asyncpg.Pool, event: AuditEvent) -> bool:
    """Write `event` on `conn` (the action's connection, inside its transaction, where there is one);
    False when its `dedupe_key` was written before."""
    status: str = await conn.execute(_INSERT, *_args(event))
    return status.endswith(" 1")


def with_audit(statement: str, args: Sequence[object], event: AuditEvent) -> tuple[str, list[object]]:
    """`statement` (one INSERT or UPDATE ... RETURNING, numbered $1..$len(args)) and `event`'s row
    as ONE statement, for an action that is a single write: the row is written only if the write
    returned a row, atomically with it, and without the BEGIN and COMMIT round trips a transaction
    costs (a third of CreateAgent's Postgres time). Its result is the write's RETURNING rows."""
    sql = f"""
        WITH action AS ({statement}),
        audited AS (
            INSERT INTO audit_events {_COLUMNS}
            SELECT {_values(len(args) + 1)} WHERE EXISTS (SELECT 1 FROM action)
        )
        SELECT * FROM action
    """
    return sql, [*args, *_args(event)]


async def apply_schema(pool: asyncpg.Pool) -> None:
    """Create or update the audit table (each service writing rows calls this at start-up)."""
    await db.apply_migrations(pool, COMPONENT, MIGRATIONS)


@dataclass(frozen=True)
class AuditQuery:
    """One page of one tenant's rows, newest first. Bounds: start inclusive, end exclusive."""

    tenant_id: str
    limit: int
    before: TimeKey | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    action: str = ""
    subject: str = ""


async def read(pool: asyncpg.Pool, query: AuditQuery) -> list[asyncpg.Record]:
    """The rows of `query`, in (event_time, id) descending order: the keyset the page token holds."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """
        SELECT * FROM audit_events
        WHERE tenant_id = $1
          AND ($2::timestamptz IS NULL OR (event_time, id) < ($2, $3))
          AND ($4::timestamptz IS NULL OR event_time >= $4)
          AND ($5::timestamptz IS NULL OR event_time < $5)
          AND ($6 = '' OR action = $6)
          AND ($7 = '' OR subject = $7)
        ORDER BY event_time DESC, id DESC
        LIMIT $8
        """,
        query.tenant_id,
        None if query.before is None else query.before.time,
        None if query.before is None else query.before.id,
        query.start_time,
        query.end_time,
        query.action,
        query.subject,
        query.limit,
    )
    return rows
