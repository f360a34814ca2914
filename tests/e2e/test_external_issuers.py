"""Tokens of outside OpenID Connect issuers through the whole slice: a Cognito-shaped and a
Keycloak-shaped issuer, each publishing its JWKS over real HTTP on loopback, configured with
`MACP_AUTH_EXTERNAL_ISSUERS`. Their users reach the conversation service through Envoy, the edge
and a token exchange at the real token service, as the tenant and tier their claims name; forged,
misdirected and expired ones are refused at the edge.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.asgi import serving
from tests.auth.forge import forge, hs256, rsa_jwk
from tests.e2e.conftest import Slice
from tests.runtime.serving import channel
from tests.tokens import bearer

pytestmark = pytest.mark.integration

COGNITO_CLIENT = "5n3hm1s2example"
KEYCLOAK_CLIENT = "macp-web"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issuers:
    base: str
    key: rsa.RSAPrivateKey

    @property
    def cognito(self) -> str:
        return f"{self.base}/cognito/eu-west-1_AbC"

    @property
    def keycloak(self) -> str:
        return f"{self.base}/realms/macp"

    def cognito_token(self, key: rsa.RSAPrivateKey | None = None, /, **claims: Any) -> str:
        """A Cognito access token: no `typ`, no `aud`, the app client in `client_id`."""
        now = int(time.time())
        payload = {
            "iss": self.cognito,
            "sub": "8f1c-user",
            "client_id": COGNITO_CLIENT,
            "token_use": "access",
            "scope": "openid aws.cognito.signin.user.admin",
            "exp": now + 600,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "custom:organizationId": "org-cognito",
            "custom:tier": "pro",
            **claims,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        return forge({"kid": "cognito-1", "alg": "RS256"}, payload, key or self.key)

    def keycloak_token(self, head: dict[str, Any] | None = None, /, **claims: Any) -> str:
        """A Keycloak access token: `typ: JWT`, `aud` a list, `azp`, the tenant in `org`."""
        now = int(time.time())
        payload = {
            "iss": self.keycloak,
            "sub": "b3a7-user",
            "aud": [KEYCLOAK_CLIENT, "account"],
            "azp": KEYCLOAK_CLIENT,
            "exp": now + 600,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "org": "org-keycloak",
            "tier": "enterprise",
            **claims,
        }
        return forge(head or {"alg": "RS256", "typ": "JWT", "kid": "kc-1"}, payload, self.key)


@pytest.fixture(scope="module")
async def issuers() -> AsyncIterator[Issuers]:
    """Two issuers' JWKS documents over HTTP; both publish the same key under their own kid."""
    key = _new_key()
    public = key.public_key()

    async def cognito_jwks(request: Request) -> JSONResponse:
        return JSONResponse({"keys": [rsa_jwk(public, "cognito-1")]})

    async def keycloak_certs(request: Request) -> JSONResponse:
        # Keycloak also publishes its encryption key; it must be skipped, not trusted.
        encryption = {**rsa_jwk(_new_key().public_key(), "kc-enc"), "use": "enc", "alg": "RSA-OAEP"}
        return JSONResponse({"keys": [rsa_jwk(public, "kc-1"), encryption]})

    app = Starlette(
        routes=[
            Route("/cognito/eu-west-1_AbC/.well-known/jwks.json", cognito_jwks),
            Route("/realms/macp/protocol/openid-connect/certs", keycloak_certs),
        ]
    )
    async with serving(lambda url: app) as base:
        yield Issuers(base, key)


@pytest.fixture(scope="module")
def module_environ(module_environ: dict[str, str], issuers: Issuers) -> dict[str, str]:
    """Every process of the slice (the edge and the token service read it) trusts both issuers."""
    configured = [
        {
            "issuer": issuers.cognito,
            "jwks_uri": f"{issuers.cognito}/.well-known/jwks.json",
            "audiences": [COGNITO_CLIENT],
            "scopes": ["conversations:read", "conversations:write"],
        },
        {
            "issuer": issuers.keycloak,
            "jwks_uri": f"{issuers.keycloak}/protocol/openid-connect/certs",
            "audiences": [KEYCLOAK_CLIENT],
            "tenant_claim": "org",
            "tier_claim": "tier",
            "scopes": ["conversations:read"],
            "client_class": "partner",
        },
    ]
    return {**module_environ, "MACP_AUTH_EXTERNAL_ISSUERS": json.dumps(configured)}


@pytest.fixture
async def mesh_slice(module_slice: Slice) -> Slice:
    """The module's one slice, as a tenant of this test's own: no test here needs a slice to itself."""
    return await module_slice.with_new_tenant()


AGENT = {"name": "Ada", "provider": "local", "model": "echo-1"}


async def test_a_cognito_user_creates_and_reads_an_agent_as_its_organization(
    mesh_slice: Slice, issuers: Issuers
) -> None:
    async with mesh_slice.client(issuers.cognito_token()) as client:
        created = await client.post("/v1/agents", json=AGENT)
        assert created.status_code == 201, created.text
        fetched = await client.get(f"/v1/agents/{created.json()['id']}")
    assert fetched.status_code == 200, fetched.text
    assert created.json()["tenantId"] == "org-cognito"
    assert created.json()["ownerId"] == "8f1c-user"
    # The local tenant of the slice does not see the organization's agent, nor the reverse.
    async with mesh_slice.client() as client:
        hidden = await client.get(f"/v1/agents/{created.json()['id']}")
    assert hidden.status_code == 404, hidden.text


async def test_a_keycloak_user_gets_the_scopes_its_issuer_is_configured_with(
    mesh_slice: Slice, issuers: Issuers
) -> None:
    async with mesh_slice.client(issuers.keycloak_token()) as client:
        read = await client.get(f"/v1/agents/{uuid.uuid4()}")
        write = await client.post("/v1/agents", json=AGENT)
    # The issuer grants conversations:read only, whatever the token's own claims say.
    assert read.status_code == 404, read.text
    assert write.status_code == 403, write.text
    assert "conversations:write" in write.json()["message"]


async def test_forged_misdirected_and_stale_external_tokens_are_refused_at_the_edge(
    mesh_slice: Slice, issuers: Issuers
) -> None:
    now = int(time.time())
    public_pem_secret = json.dumps(rsa_jwk(issuers.key.public_key(), "kc-1")).encode()
    refused = {
        "signed by a key the issuer does not publish": issuers.cognito_token(_new_key()),
        "another app client": issuers.cognito_token(client_id="someone-elses-client"),
        "expired": issuers.cognito_token(exp=now - 120, iat=now - 720),
        "not yet valid": issuers.keycloak_token(nbf=now + 600),
        "no organization": issuers.cognito_token(**{"custom:organizationId": None}),
        "unknown tier": issuers.cognito_token(**{"custom:tier": "platinum"}),
        "an issuer nobody configured": issuers.cognito_token(iss=f"{issuers.base}/cognito/other"),
        "the issuer's key under another issuer's name": issuers.keycloak_token(iss=issuers.cognito),
        "alg none": forge({"alg": "none", "kid": "kc-1"}, {"iss": issuers.keycloak}, signature=""),
        "HS256 with the public key": hs256(
            {"alg": "HS256", "typ": "JWT", "kid": "kc-1"},
            {"iss": issuers.keycloak, "aud": KEYCLOAK_CLIENT, "sub": "x", "org": "o", "exp": now + 60},
            public_pem_secret,
        ),
        "a jku header": issuers.keycloak_token(
            {"alg": "RS256", "kid": "kc-1", "jku": f"{issuers.base}/evil.json"}
        ),
        "the encryption key's kid": issuers.keycloak_token({"alg": "RS256", "kid": "kc-enc"}),
        "a path in the kid": issuers.keycloak_token({"alg": "RS256", "kid": "../../kc-1"}),
        "typ of a refresh token": issuers.keycloak_token({"alg": "RS256", "typ": "Refresh", "kid": "kc-1"}),
    }
    async with mesh_slice.client() as client:
        for name, token in refused.items():
            response = await client.get(
                f"/v1/agents/{uuid.uuid4()}", headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401, (name, response.text)
            assert response.json()["code"] == "UNAUTHENTICATED", name


async def test_an_external_token_is_not_accepted_by_a_service_directly(
    mesh_slice: Slice, issuers: Issuers
) -> None:
    """Only the edge takes end-user credentials: the token exchange is the way into the mesh."""
    token = issuers.cognito_token()
    async with channel(mesh_slice.conversation_port) as opened:
        stub = pb_grpc.ConversationServiceStub(opened)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetAgent(pb.GetAgentRequest(id=str(uuid.uuid4())), metadata=bearer(token))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
