"""The token service's audited actions, on the real service, Postgres and Redis: every issue (each
grant and agent tokens), exchange, revocation and client registration written exactly once with the
right subject, actor chain and client; failures and repeated revocations write nothing; and
ListAuditEvents shows a tenant's admin that tenant's rows only, in pages, filtered."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.runtime.auth.settings import EDGE_AUDIENCE
from tests.audit.helpers import admin_user, new_agent_token, of, rows, signed_in
from tests.token.harness import ACCESS_TOKEN_TYPE, TOKEN_AUDIENCE, rpc_error, unverified
from tests.tokens import PASSWORD, TokenWorld, bearer, token_world

pytestmark = pytest.mark.integration


async def _list(tokens: TokenWorld, token: str, **fields: object) -> pb.ListAuditEventsResponse:
    response: pb.ListAuditEventsResponse = await tokens.harness.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(**fields),  # type: ignore[arg-type]
        metadata=bearer(token),
    )
    return response


async def test_each_token_action_is_audited_once_with_its_actor_chain(
    service_environ: dict[str, str],
) -> None:
    async with token_world(service_environ) as tokens:
        db, stub = tokens.harness.db, tokens.harness.stub
        tenant = await tokens.tenant()
        created, user_created, registered = await rows(db, tenant.tenant_id)
        assert (created.action, user_created.action) == ("tenant.create", "user.create")
        assert (registered.action, registered.resource) == (
            "client.register",
            f"client/{tenant.client.client_id}",
        )
        assert registered.subject == "initial-access-token"

        user_token = await tokens.user_token(tenant, [EDGE_AUDIENCE])
        claims = unverified(user_token)[1]
        user_id = claims["sub"]
        [issued] = of(await rows(db, tenant.tenant_id), "token.issue")
        assert (issued.resource, issued.subject, issued.client_id, issued.actors) == (
            f"token/{claims['jti']}",
            user_id,
            tenant.client.client_id,
            (),
        )
        assert issued.detail["grant_type"] == "password"

        # A failed sign-in issues nothing, so it audits nothing.
        wrong = pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_PASSWORD,
            client_id=tenant.client.client_id,
            client_secret=tenant.client.client_secret,
            username=tenant.username,
            password="not the password",
        )
        assert (await rpc_error(stub.IssueToken(wrong))).code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(of(await rows(db, tenant.tenant_id), "token.issue")) == 1

        # An agent token: issued in the agent's tenant, by the internal client that asked for it.
        minter_id, agent_id, agent_token = await new_agent_token(tokens, tenant, user_id)
        [agent_issue] = [
            r for r in of(await rows(db, tenant.tenant_id), "token.issue") if r.subject == minter_id
        ]
        assert agent_issue.detail["grant_type"] == "agent_token"
        assert agent_issue.detail["agent_id"] == agent_id

        # RFC 8693: the user's token with the agent acting: the chain names the agent.
        exchanged: pb.ExchangeTokenResponse = await stub.ExchangeToken(
            pb.ExchangeTokenRequest(
                client_id=tenant.client.client_id,
                client_secret=tenant.client.client_secret,
                subject_token=user_token,
                subject_token_type=ACCESS_TOKEN_TYPE,
                actor_token=agent_token,
                actor_token_type=ACCESS_TOKEN_TYPE,
            )
        )
        exchanged_jti = unverified(exchanged.access_token)[1]["jti"]
        [exchange] = of(await rows(db, tenant.tenant_id), "token.exchange")
        assert (exchange.resource, exchange.subject, exchange.client_id) == (
            f"token/{exchanged_jti}",
            user_id,
            tenant.client.client_id,
        )
        assert exchange.actors == (("agent", agent_id),)
        assert exchange.detail["subject_token_id"] == claims["jti"]

        # Revoked twice (RFC 7009 lets a client retry): one revocation, one row.
        revoke = pb.RevokeRequest(
            client_id=tenant.client.client_id,
            client_secret=tenant.client.client_secret,
            token=exchanged.access_token,
        )
        await stub.Revoke(revoke)
        await stub.Revoke(revoke)
        [revoked] = of(await rows(db, tenant.tenant_id), "token.revoke")
        assert (revoked.resource, revoked.subject) == (f"token/{exchanged_jti}", tenant.client.client_id)

        found = await rows(db, tenant.tenant_id)
        assert sorted(r.action for r in found) == sorted(
            [
                "tenant.create",
                "user.create",
                "client.register",
                "token.issue",
                "token.issue",
                "token.exchange",
                "token.revoke",
            ]
        )


async def test_only_a_tenants_admin_reads_its_audit_log(service_environ: dict[str, str]) -> None:
    async with token_world(service_environ) as tokens:
        acme, globex = await tokens.tenant(), await tokens.tenant()
        acme_admin = await signed_in(tokens, acme, await admin_user(tokens, acme), [TOKEN_AUDIENCE])
        globex_admin = await signed_in(tokens, globex, await admin_user(tokens, globex), [TOKEN_AUDIENCE])
        acme_user = await tokens.user_token(acme, [TOKEN_AUDIENCE])
        assert "audit:read" in unverified(acme_admin)[1]["scope"].split()
        assert "audit:read" not in unverified(acme_user)[1]["scope"].split()

        # A non-admin: refused, whatever it asks for.
        refused = await rpc_error(_list(tokens, acme_user))
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED
        assert "audit:read" in refused.details

        # Each admin sees its own tenant's rows, all of them, newest first, and nothing else.
        for admin, tenant, other in ((acme_admin, acme, globex), (globex_admin, globex, acme)):
            everything = await _list(tokens, admin, page_size=1000)
            stored = await rows(tokens.harness.db, tenant.tenant_id)
            assert [e.action for e in everything.events] == [r.action for r in reversed(stored)]
            assert {e.tenant_id for e in everything.events} == {tenant.tenant_id}
            foreign = {r.resource for r in await rows(tokens.harness.db, other.tenant_id)}
            assert not foreign & {e.resource for e in everything.events}

        # Pages of two walk the same rows once each; a token is bound to its tenant and filters.
        everything = await _list(tokens, acme_admin, page_size=1000)
        walked, page_token, pages = [], "", 0
        while True:
            page = await _list(tokens, acme_admin, page_size=2, page_token=page_token)
            walked += [e.id for e in page.events]
            pages += 1
            page_token = page.next_page_token
            if not page_token:
                break
            replayed = await rpc_error(_list(tokens, globex_admin, page_size=2, page_token=page_token))
            assert (replayed.code, replayed.details.split(":")[0]) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "page_token",
            )
        assert walked == [e.id for e in everything.events]
        assert pages == (len(walked) + 1) // 2

        # Filters: by action, by subject, by time.
        issues = await _list(tokens, acme_admin, action=audit.TOKEN_ISSUE)
        assert issues.events
        assert {e.action for e in issues.events} == {"token.issue"}
        user_id = unverified(acme_user)[1]["sub"]
        mine = await _list(tokens, acme_admin, subject=user_id)
        # The user signed in (for the edge), then that token was exchanged for the token service.
        assert [e.action for e in mine.events] == ["token.exchange", "token.issue"]
        assert mine.events[0].resource == f"token/{unverified(acme_user)[1]['jti']}"
        newest = everything.events[0]
        later = await _list(tokens, acme_admin, start_time=newest.time)
        assert [e.id for e in later.events] == [newest.id]
        earlier = await _list(tokens, acme_admin, end_time=newest.time)
        assert [e.id for e in earlier.events] == [e.id for e in everything.events[1:]]

        bad_action = await rpc_error(_list(tokens, acme_admin, action="token.steal"))
        assert (bad_action.code, bad_action.details.split(":")[0]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "action",
        )
        beyond = await rpc_error(_list(tokens, acme_admin, start_time=Timestamp(seconds=10**12)))
        assert (beyond.code, beyond.details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "start_time")
        backwards = pb.ListAuditEventsRequest(start_time=newest.time, end_time=everything.events[-1].time)
        inverted = await rpc_error(
            tokens.harness.stub.ListAuditEvents(backwards, metadata=bearer(acme_admin))
        )
        assert (inverted.code, inverted.details.split(":")[0]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "end_time",
        )


async def test_a_refresh_reuse_revokes_the_family_once(service_environ: dict[str, str]) -> None:
    async with token_world(service_environ) as tokens:
        db, stub = tokens.harness.db, tokens.harness.stub
        tenant = await tokens.tenant()
        app = await tokens.harness.register(
            client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
            tenant_id=tenant.tenant_id,
            grant_types=["password", "refresh_token"],
            scope="conversations:read",
        )
        signed: pb.IssueTokenResponse = await stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_PASSWORD,
                client_id=app.client_id,
                client_secret=app.client_secret,
                username=tenant.username,
                password=PASSWORD,
            )
        )
        refresh = pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
            client_id=app.client_id,
            client_secret=app.client_secret,
            refresh_token=signed.refresh_token,
        )
        await stub.IssueToken(refresh)
        grants = [r.detail["grant_type"] for r in of(await rows(db, tenant.tenant_id), "token.issue")]
        assert grants == ["password", "refresh_token"]

        # The used refresh token again: the whole family is revoked, and audited, once however often.
        for _ in range(2):
            reused = await rpc_error(stub.IssueToken(refresh))
            assert "already used" in reused.details
        [revoked] = of(await rows(db, tenant.tenant_id), "token.revoke")
        assert revoked.resource.startswith("token_family/")
        assert (revoked.subject, revoked.client_id) == (app.client_id, app.client_id)
        assert revoked.detail == {"reason": "refresh token reuse"}
        assert len(of(await rows(db, tenant.tenant_id), "token.issue")) == 2


async def test_admin_actions_are_audited_as_done_by_the_admin_client(service_environ: dict[str, str]) -> None:
    """CreateTenant and CreateUser in the tenant they create or add to, RotateSigningKey in the system
    tenant; each by the administrator's client, exactly once (a taken id writes nothing)."""
    async with token_world(service_environ) as tokens:
        harness, stub = tokens.harness, tokens.harness.stub
        metadata = await harness.admin_metadata()
        admin_client = unverified(metadata[0][1].removeprefix("Bearer "))[1]["client_id"]
        pro = principal_pb2.TIER_PRO
        await stub.CreateTenant(pb.CreateTenantRequest(tenant_id="acme", tier=pro), metadata=metadata)
        created = await stub.CreateUser(
            pb.CreateUserRequest(tenant_id="acme", username="ada", password=PASSWORD, admin=True),
            metadata=metadata,
        )
        again = stub.CreateTenant(pb.CreateTenantRequest(tenant_id="acme", tier=pro), metadata=metadata)
        assert (await rpc_error(again)).code == grpc.StatusCode.ALREADY_EXISTS
        rotated = await stub.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=metadata)

        tenant_created, user_created = await rows(harness.db, "acme")
        assert (tenant_created.action, tenant_created.resource) == ("tenant.create", "tenant/acme")
        assert tenant_created.detail == {"tier": "pro"}
        assert (user_created.action, user_created.resource) == ("user.create", f"user/{created.user.user_id}")
        assert user_created.detail == {"username": "ada", "admin": "true"}
        [key_rotated] = await rows(harness.db, "macp", "key.rotate")
        assert key_rotated.resource == f"key/{rotated.kid}"
        assert key_rotated.detail == {"previous_kid": rotated.previous_kid}
        for row in (tenant_created, user_created, key_rotated):
            assert (row.subject, row.client_id, row.outcome) == (admin_client, admin_client, "success")
