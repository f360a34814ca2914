"""Who calls the token service's own port: introspection answers only an authenticated confidential
client (RFC 7662 2.1), about its own tenant's tokens unless it is internal; and a call carrying two
credentials (two `authorization` entries, or one beside client credentials in the body) is refused."""

from __future__ import annotations

import grpc
import pytest
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from services.runtime.auth.basic import encode_basic
from tests.token.harness import USER_PASSWORD, RegisteredClient, TokenHarness, rpc_error

pytestmark = pytest.mark.integration

PASSWORD = USER_PASSWORD


async def _user_token(token_service: TokenHarness, tenant_id: str) -> str:
    await token_service.tenant(tenant_id)
    await token_service.user(tenant_id, f"ada-{tenant_id}", PASSWORD)
    app = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER, tenant_id=tenant_id, grant_types=["password"]
    )
    issued = await token_service.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_PASSWORD,
            client_id=app.client_id,
            client_secret=app.client_secret,
            username=f"ada-{tenant_id}",
            password=PASSWORD,
        )
    )
    return issued.access_token


def _basic(client_id: str, secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", encode_basic(client_id, secret)),)


async def test_introspection_answers_only_an_authenticated_client(token_service: TokenHarness) -> None:
    token = await _user_token(token_service, "acme")
    real = await token_service.register(name="resource server")
    public = await token_service.register(auth_method="none", grant_types=["password"], name="public")
    request = pb.IntrospectRequest(token=token)
    for case, metadata in {
        "no credentials": (),
        "a made-up client": _basic("made-up-client", "guess"),
        "a wrong secret": _basic(real.client_id, "guess"),
        "a public client": _basic(public.client_id, ""),
        "the token itself as a bearer": (("authorization", f"Bearer {token}"),),
        "not base64": (("authorization", "Basic !!!"),),
        "a NUL in the client id": _basic("made-up\x00client", "guess"),
    }.items():
        refused = await rpc_error(token_service.stub.Introspect(request, metadata=metadata))
        assert refused.code == grpc.StatusCode.UNAUTHENTICATED, case
        assert refused.details.startswith("invalid_client: "), (case, refused.details)
    found = await token_service.introspect(token, real)
    assert (found.active, found.username) == (True, "ada-acme")


async def test_a_tenants_client_learns_nothing_of_another_tenants_tokens(token_service: TokenHarness) -> None:
    acme_token = await _user_token(token_service, "acme")
    globex_token = await _user_token(token_service, "globex")
    acme_server = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_PARTNER, tenant_id="acme", name="acme's resource server"
    )
    assert (await token_service.introspect(acme_token, acme_server)).active
    assert await token_service.introspect(globex_token, acme_server) == pb.IntrospectResponse(active=False)
    assert (await token_service.introspect(globex_token)).active  # an internal client's


async def test_two_credentials_are_refused_on_every_rpc(token_service: TokenHarness) -> None:
    admin = await token_service.admin_metadata()
    client = await token_service.register(scope="conversations:read")
    other = await token_service.register(scope="conversations:read")
    token = (await token_service.client_token(client)).access_token
    stub = token_service.stub
    junk = ("authorization", "Bearer not-a-token")
    create = pb.CreateTenantRequest(tenant_id="acme", tier=principal_pb2.TIER_PRO)
    issue = pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
        client_id=client.client_id,
        client_secret=client.client_secret,
    )
    revoke = pb.RevokeRequest(token=token, client_id=client.client_id, client_secret=client.client_secret)
    introspect = pb.IntrospectRequest(token=token)
    calls = {
        # Two `authorization` entries, the valid one first or last: neither wins.
        "admin, valid first": stub.CreateTenant(create, metadata=(*admin, junk)),
        "admin, valid last": stub.CreateTenant(create, metadata=(junk, *admin)),
        "introspect, two clients": stub.Introspect(
            introspect,
            metadata=(*_basic(client.client_id, client.client_secret), *_basic(other.client_id, "x")),
        ),
        # Client credentials in the body and an `authorization` entry as well.
        "issue, body and basic": stub.IssueToken(
            issue, metadata=_basic(other.client_id, other.client_secret)
        ),
        "issue, body and bearer": stub.IssueToken(issue, metadata=(junk,)),
        "revoke, body and basic": stub.Revoke(
            revoke, metadata=_basic(client.client_id, client.client_secret)
        ),
        "register, body and bearer": stub.RegisterClient(
            pb.RegisterClientRequest(
                initial_access_token=token_service.initial_access_token,
                metadata=pb.ClientMetadata(client_name="x", client_class=principal_pb2.CLIENT_CLASS_INTERNAL),
            ),
            metadata=admin,
        ),
    }
    for case, call in calls.items():
        refused = await rpc_error(call)
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, (case, refused)
        assert refused.details.startswith("invalid_request: "), (case, refused.details)
    assert await token_service.db.fetchval("SELECT count(*) FROM token_tenants WHERE tenant_id = 'acme'") == 0
    assert (await token_service.introspect(token)).active  # nothing was revoked either


async def test_a_client_revokes_only_its_own_tokens(token_service: TokenHarness) -> None:
    owner = await token_service.register(scope="conversations:read")
    stranger: RegisteredClient = await token_service.register(scope="conversations:read")
    token = (await token_service.client_token(owner)).access_token
    refused = await rpc_error(
        token_service.stub.Revoke(
            pb.RevokeRequest(token=token, client_id=stranger.client_id, client_secret=stranger.client_secret)
        )
    )
    assert refused.details.startswith("unauthorized_client: ")
    guessed = await rpc_error(
        token_service.stub.Revoke(
            pb.RevokeRequest(token=token, client_id=owner.client_id, client_secret="guess")
        )
    )
    assert guessed.details.startswith("invalid_client: ")
    assert (await token_service.introspect(token)).active
