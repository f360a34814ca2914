"""Revocation cascades (RFC 8693 lineage): revoking a token revokes every live token exchanged from
it, as subject or as actor, at any depth, in Postgres and in the Redis marks every verifier reads,
so the services' one revocation check per token (services/runtime/auth/revocation.py) refuses them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from macp.token.v1 import token_service_pb2 as pb

from services.runtime.auth.revocation import RevocationChecker
from services.token.claims import AccessClaims
from services.token.verification import TokenVerifier
from tests.token.harness import TokenHarness, password_grant, rpc_error, unverified
from tests.token.test_exchange import Parties, agent_token, exchange
from tests.token.test_exchange import parties as parties  # the fixture, shared

pytestmark = pytest.mark.integration

CONVERSATION = ("urn:macp:service:conversation",)
ORCHESTRATOR = ("urn:macp:service:orchestrator",)


def _jti(token: str) -> str:
    jti: str = unverified(token)[1]["jti"]
    return jti


async def _revoked_everywhere(token_service: TokenHarness, token: str) -> bool:
    """What a service's verifier sees (a fresh checker: nothing cached), and introspection."""
    checker = RevocationChecker(token_service.redis, token_service.redis_prefix)
    revoked = await checker.is_revoked(_jti(token))
    assert revoked == (not (await token_service.introspect(token)).active)
    return revoked


async def test_revoking_a_users_token_revokes_what_was_exchanged_from_it(
    token_service: TokenHarness, parties: Parties
) -> None:
    _, actor = await agent_token(token_service, parties)
    # The edge's exchange for the orchestrator; the orchestrator's, with the agent acting, for a service.
    child = (
        await token_service.stub.ExchangeToken(exchange(parties, parties.user_token, audience=ORCHESTRATOR))
    ).access_token
    grandchild = (
        await token_service.stub.ExchangeToken(exchange(parties, child, actor, audience=CONVERSATION))
    ).access_token
    unrelated = (
        await token_service.stub.ExchangeToken(exchange(parties, actor, audience=CONVERSATION))
    ).access_token
    assert not await _revoked_everywhere(token_service, grandchild)

    await token_service.stub.Revoke(
        pb.RevokeRequest(
            token=parties.user_token, client_id=parties.app.client_id, client_secret=parties.app.client_secret
        )
    )
    for token in (parties.user_token, child, grandchild):
        assert await _revoked_everywhere(token_service, token)
        assert await token_service.revoked_ttl(_jti(token)) > 0
    assert not await _revoked_everywhere(token_service, unrelated)  # the agent's own lineage
    reasons = await token_service.db.fetch("SELECT jti, reason FROM token_revocations")
    assert {row["jti"]: row["reason"] for row in reasons} == {
        _jti(parties.user_token): "revoked by client",
        _jti(child): "exchanged from a revoked token",
        _jti(grandchild): "exchanged from a revoked token",
    }
    # Nothing new can be exchanged from a revoked lineage either.
    refused = await rpc_error(
        token_service.stub.ExchangeToken(exchange(parties, child, audience=CONVERSATION))
    )
    assert refused.details.startswith("invalid_request: subject_token")


async def test_revoking_an_agents_token_revokes_the_tokens_it_acts_with(
    token_service: TokenHarness, parties: Parties
) -> None:
    minter = await token_service.register(scope="conversations:read macp:agent-token")
    bearer = await token_service.client_token(minter, "macp:agent-token", ["urn:macp:service:token"])
    actor = (
        await token_service.stub.IssueAgentToken(
            pb.IssueAgentTokenRequest(agent_id=str(uuid.uuid4()), owner_id=parties.user_id, tenant_id="acme"),
            metadata=(("authorization", f"Bearer {bearer.access_token}"),),
        )
    ).access_token
    delegated = await token_service.stub.ExchangeToken(
        exchange(parties, parties.user_token, actor, audience=CONVERSATION)
    )
    await token_service.stub.Revoke(
        pb.RevokeRequest(token=actor, client_id=minter.client_id, client_secret=minter.client_secret)
    )
    assert await _revoked_everywhere(token_service, delegated.access_token)
    assert not await _revoked_everywhere(token_service, parties.user_token)  # the user's own token lives


async def test_revoking_a_refresh_family_revokes_what_its_tokens_were_exchanged_for(
    token_service: TokenHarness, parties: Parties
) -> None:
    cli = await token_service.register(grant_types=["password", "refresh_token"], scope="conversations:read")
    signed_in = await token_service.stub.IssueToken(password_grant(cli.client_id, cli.client_secret))
    exchanged = await token_service.stub.ExchangeToken(
        exchange(parties, signed_in.access_token, audience=CONVERSATION)
    )
    await token_service.stub.Revoke(
        pb.RevokeRequest(
            token=signed_in.refresh_token, client_id=cli.client_id, client_secret=cli.client_secret
        )
    )
    assert await _revoked_everywhere(token_service, signed_in.access_token)
    assert await _revoked_everywhere(token_service, exchanged.access_token)


async def test_an_exchange_racing_its_subjects_revocation_revokes_its_own_token(
    token_service: TokenHarness, parties: Parties, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation committing between the exchange's check of its subject and the recording of the
    new token cascades too early to see it: the exchange, checking again once recorded, revokes it."""
    checked = TokenVerifier.check_subject

    async def revoked_meanwhile(self: TokenVerifier, token: str) -> AccessClaims | None:
        claims = await checked(self, token)
        assert claims is not None
        await token_service.db.execute(
            "INSERT INTO token_revocations (jti, reason, expire_time) VALUES ($1, 'revoked by client', $2)",
            claims.jti,
            datetime.fromtimestamp(claims.exp, UTC),
        )
        return claims

    monkeypatch.setattr(TokenVerifier, "check_subject", revoked_meanwhile)
    refused = await rpc_error(
        token_service.stub.ExchangeToken(exchange(parties, parties.user_token, audience=CONVERSATION))
    )
    assert refused.details == "invalid_request: subject_token or actor_token was revoked"
    minted = await token_service.db.fetchval(
        "SELECT jti FROM token_issued WHERE subject_jti = $1", _jti(parties.user_token)
    )
    assert minted is not None
    assert await token_service.db.fetchval("SELECT reason FROM token_revocations WHERE jti = $1", minted) == (
        "exchanged from a revoked token"
    )
    assert await token_service.revoked_ttl(minted) > 0
