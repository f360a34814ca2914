"""What the audit tests share: the rows as Postgres holds them (read with plain SQL, not through
ListAuditEvents, so the exactly-once counts do not depend on the code under test), and tenant
admins signed in through the token service's own RPCs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from macp.token.v1 import token_service_pb2 as pb

from services.runtime.auth.settings import EDGE_AUDIENCE
from tests.tokens import PASSWORD, Tenant, TokenWorld, bearer


@dataclass(frozen=True)
class Row:
    action: str
    resource: str
    subject: str
    client_id: str
    actors: tuple[tuple[str, str], ...]  # (type, id), most recent first
    outcome: str
    request_id: str
    correlation_id: str
    detail: dict[str, Any]


async def rows(db: asyncpg.Pool, tenant_id: str, action: str | None = None) -> list[Row]:
    """The tenant's audit rows (of one action, if given), oldest first."""
    found = await db.fetch(
        "SELECT * FROM audit_events WHERE tenant_id = $1 AND ($2::text IS NULL OR action = $2)"
        " ORDER BY event_time, id",
        tenant_id,
        action,
    )
    return [
        Row(
            row["action"],
            row["resource"],
            row["subject"],
            row["client_id"],
            tuple((actor["type"], actor["id"]) for actor in json.loads(row["actor_chain"])),
            row["outcome"],
            row["request_id"],
            row["correlation_id"],
            json.loads(row["detail"]),
        )
        for row in found
    ]


def of(found: Sequence[Row], action: str, resource: str | None = None) -> list[Row]:
    return [row for row in found if row.action == action and (resource is None or row.resource == resource)]


async def admin_user(tokens: TokenWorld, tenant: Tenant) -> str:
    """A new admin user of `tenant` (created with CreateUser admin), returning its username."""
    username = f"admin-{uuid.uuid4().hex[:8]}"
    harness = tokens.harness
    admin = await harness.register(scope="macp:admin")
    bearer = await harness.client_token(admin, "macp:admin", ["urn:macp:service:token"])
    created: pb.CreateUserResponse = await harness.stub.CreateUser(
        pb.CreateUserRequest(tenant_id=tenant.tenant_id, username=username, password=PASSWORD, admin=True),
        metadata=(("authorization", f"Bearer {bearer.access_token}"),),
    )
    assert created.user.admin
    return username


async def signed_in(tokens: TokenWorld, tenant: Tenant, username: str, audience: Sequence[str]) -> str:
    """A token of `username` for `audience`: its password-grant token through `tenant`'s client,
    exchanged by an internal client for a service audience (a sign-in gets the edge's only)."""
    response: pb.IssueTokenResponse = await tokens.harness.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_PASSWORD,
            client_id=tenant.client.client_id,
            client_secret=tenant.client.client_secret,
            username=username,
            password=PASSWORD,
        )
    )
    if list(audience) == [EDGE_AUDIENCE]:
        return response.access_token
    return await tokens.for_service(response.access_token, audience)


async def new_agent_token(
    tokens: TokenWorld, tenant: Tenant, owner_id: str, scope: str = ""
) -> tuple[str, str, str]:
    """(minting client id, agent id, agent token) from an internal client holding macp:agent-token."""
    minter = await tokens.harness.register(scope=f"macp:agent-token {scope}".strip())
    bearer_token = await tokens.harness.client_token(minter, "macp:agent-token", ["urn:macp:service:token"])
    agent_id = str(uuid.uuid4())
    minted: pb.IssueAgentTokenResponse = await tokens.harness.stub.IssueAgentToken(
        pb.IssueAgentTokenRequest(
            agent_id=agent_id, owner_id=owner_id, tenant_id=tenant.tenant_id, scope=scope
        ),
        metadata=bearer(bearer_token.access_token),
    )
    return minter.client_id, agent_id, minted.access_token
