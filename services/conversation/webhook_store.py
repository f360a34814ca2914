"""Postgres persistence of webhook subscriptions and of their deliveries that failed at least once.

Every user-facing query is scoped by tenant; the deliverers' queries (`targets`, `record`) read and
write across tenants, and the service only lets MACP's own internal client make them
(services/conversation/webhooks.py). Each statement is its own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from macp.conversation.v1 import webhook_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent
from services.runtime.paging import TimeKey
from services.runtime.protos import timestamp


def subscription_from_row(row: asyncpg.Record) -> pb.WebhookSubscription:
    subscription = pb.WebhookSubscription(
        id=str(row["id"]),
        tenant_id=row["tenant_id"],
        url=row["url"],
        conversation_id="" if row["conversation_id"] is None else str(row["conversation_id"]),
        event_kinds=list(row["event_kinds"]),
        etag=row["etag"],
    )
    subscription.create_time.CopyFrom(timestamp(row["create_time"]))
    subscription.update_time.CopyFrom(timestamp(row["update_time"]))
    state = subscription.delivery_state
    if row["last_success_time"] is not None:
        state.last_success_time.CopyFrom(timestamp(row["last_success_time"]))
    if row["last_failure_time"] is not None:
        state.last_failure_time.CopyFrom(timestamp(row["last_failure_time"]))
    state.last_failure_reason = row["last_failure_reason"]
    state.consecutive_failures = row["consecutive_failures"]
    return subscription


def delivery_from_row(row: asyncpg.Record) -> pb.WebhookDelivery:
    delivery = pb.WebhookDelivery(
        id=row["id"],
        subscription_id=str(row["subscription_id"]),
        conversation_id=str(row["conversation_id"]),
        event_id=row["event_id"],
        event_kind=row["event_kind"],
        status=row["status"],
        attempts=row["attempts"],
        last_failure_reason=row["last_failure_reason"],
        last_http_status=row["last_http_status"],
    )
    delivery.create_time.CopyFrom(timestamp(row["create_time"]))
    delivery.update_time.CopyFrom(timestamp(row["update_time"]))
    return delivery


@dataclass(frozen=True)
class StoredTarget:
    """A subscription with its sealed secret and the conversations it is delivered from."""

    subscription: pb.WebhookSubscription
    sealed_secret: bytes
    conversation_ids: list[str]


class WebhookStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(
        self, subscription: pb.WebhookSubscription, sealed_secret: bytes, audited: AuditEvent
    ) -> pb.WebhookSubscription:
        """Insert `subscription` with its audit row, in one statement (services/runtime/audit.py)."""
        sql, args = audit.with_audit(
            """
            INSERT INTO conversation_webhook_subscriptions
                (id, tenant_id, url, conversation_id, event_kinds, sealed_secret, etag)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            RETURNING *
            """,
            [
                uuid.UUID(subscription.id),
                subscription.tenant_id,
                subscription.url,
                uuid.UUID(subscription.conversation_id) if subscription.conversation_id else None,
                list(subscription.event_kinds),
                sealed_secret,
                subscription.etag,
            ],
            audited,
        )
        row = await self._pool.fetchrow(sql, *args)
        assert row is not None
        return subscription_from_row(row)

    async def get(self, tenant_id: str, subscription_id: uuid.UUID) -> pb.WebhookSubscription | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM conversation_webhook_subscriptions WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            subscription_id,
        )
        return None if row is None else subscription_from_row(row)

    async def list(self, tenant_id: str, after: TimeKey | None, limit: int) -> list[pb.WebhookSubscription]:
        rows = await self._pool.fetch(
            """
            SELECT * FROM conversation_webhook_subscriptions
            WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3))
            ORDER BY create_time, id
            LIMIT $4
            """,
            tenant_id,
            None if after is None else after.time,
            None if after is None else after.id,
            limit,
        )
        return [subscription_from_row(row) for row in rows]

    async def delete(
        self, tenant_id: str, subscription_id: uuid.UUID, etag: str, audited: AuditEvent
    ) -> tuple[bool, bool]:
        """(found, deleted): deleted only when `etag` is empty or still the row's; the audit row is
        written in the same transaction, only when it was deleted."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                WITH found AS (
                    SELECT id, etag FROM conversation_webhook_subscriptions WHERE tenant_id = $1 AND id = $2
                ), deleted AS (
                    DELETE FROM conversation_webhook_subscriptions s USING found
                    WHERE s.id = found.id AND ($3 = '' OR found.etag = $3)
                    RETURNING s.id
                )
                SELECT (SELECT count(*) FROM found) AS found, (SELECT count(*) FROM deleted) AS deleted
                """,
                tenant_id,
                subscription_id,
                etag,
            )
            assert row is not None
            if row["deleted"]:
                await audit.record(conn, audited)
        return bool(row["found"]), bool(row["deleted"])

    async def deliveries(
        self, tenant_id: str, subscription_id: uuid.UUID, status: int, limit: int
    ) -> Sequence[pb.WebhookDelivery]:
        # $1 tenant, $2 subscription, $3 status (0 = any), $4 limit.
        rows = await self._pool.fetch(
            """
            SELECT * FROM conversation_webhook_deliveries
            WHERE tenant_id = $1 AND subscription_id = $2 AND ($3 = 0 OR status = $3)
            ORDER BY update_time DESC, id
            LIMIT $4
            """,
            tenant_id,
            subscription_id,
            status,
            limit,
        )
        return [delivery_from_row(row) for row in rows]

    async def targets(self, active_since: datetime) -> Sequence[StoredTarget]:
        """Every subscription with its sealed secret and the conversations to deliver from: its own,
        or (tenant-wide) the tenant's live conversations with a message since `active_since` and
        since the subscription was created."""
        rows = await self._pool.fetch(
            """
            SELECT s.*,
                   CASE WHEN s.conversation_id IS NOT NULL THEN ARRAY[s.conversation_id]
                   ELSE ARRAY(
                       SELECT DISTINCT m.conversation_id FROM conversation_messages m
                       JOIN conversation_conversations c ON c.id = m.conversation_id
                       WHERE m.tenant_id = s.tenant_id AND c.delete_time IS NULL
                         AND m.create_time >= greatest($1, s.create_time)
                   ) END AS targets
            FROM conversation_webhook_subscriptions s
            ORDER BY s.create_time, s.id
            """,
            active_since,
        )
        return [
            StoredTarget(subscription_from_row(row), row["sealed_secret"], [str(c) for c in row["targets"]])
            for row in rows
        ]

    async def record(self, tenant_id: str, delivery: pb.WebhookDelivery) -> None:
        """One attempt's outcome. A failed or dead-lettered attempt (or the success of one that
        failed before) is upserted as the delivery's row, only if it has more attempts than the row
        holds: a repeated report changes nothing. The subscription's state follows the report that
        changed something (a first-attempt success has no row and always does)."""
        delivered = delivery.status == pb.WEBHOOK_DELIVERY_STATUS_DELIVERED
        # $1 subscription, $2 webhook id, $3 tenant, $4 conversation, $5 event id, $6 kind,
        # $7 status, $8 attempts, $9 reason, $10 http status, $11 delivered (bool).
        await self._pool.execute(
            """
            WITH recorded AS (
                INSERT INTO conversation_webhook_deliveries AS d
                    (subscription_id, id, tenant_id, conversation_id, event_id, event_kind, status,
                     attempts, last_failure_reason, last_http_status)
                SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
                WHERE NOT ($11 AND $8 = 1)
                  AND EXISTS (
                      SELECT 1 FROM conversation_webhook_subscriptions WHERE id = $1 AND tenant_id = $3
                  )
                ON CONFLICT (subscription_id, id) DO UPDATE
                    SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
                        last_failure_reason = CASE WHEN $11 THEN d.last_failure_reason
                                                   ELSE EXCLUDED.last_failure_reason END,
                        last_http_status = CASE WHEN $11 THEN d.last_http_status
                                                ELSE EXCLUDED.last_http_status END,
                        update_time = now()
                    WHERE d.attempts < EXCLUDED.attempts
                       OR (d.attempts = EXCLUDED.attempts AND d.status <> EXCLUDED.status)
                RETURNING 1
            )
            UPDATE conversation_webhook_subscriptions
            SET last_success_time = CASE WHEN $11 THEN now() ELSE last_success_time END,
                last_failure_time = CASE WHEN $11 THEN last_failure_time ELSE now() END,
                last_failure_reason = CASE WHEN $11 THEN last_failure_reason ELSE $9 END,
                consecutive_failures = CASE WHEN $11 THEN 0 ELSE consecutive_failures + 1 END
            WHERE id = $1 AND tenant_id = $3 AND (($11 AND $8 = 1) OR EXISTS (SELECT 1 FROM recorded))
            """,
            uuid.UUID(delivery.subscription_id),
            delivery.id,
            tenant_id,
            uuid.UUID(delivery.conversation_id),
            delivery.event_id,
            delivery.event_kind,
            delivery.status,
            delivery.attempts,
            delivery.last_failure_reason,
            delivery.last_http_status,
            delivered,
        )
