"""OpenID Connect over HTTP, as a relying party sees it: through Envoy's front listener to the edge,
the real token service and the whole mesh. The discovery document, a code flow with `openid` and a
nonce whose ID token is verified with PyJWT against the published key set, claim by claim; the ID
token refused wherever an access token goes; `openid` refused outside the code flow.

The sign-in itself is tests/edge/test_sign_in.py's, through its helpers."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from tests.edge.test_sign_in import (
    CONSOLE,
    ISSUER,
    STACK,
    agents,
    answer,
    code_for,
    hidden_fields,
    page,
    pkce,
    redeem,
    request_params,
    sign_in,
)
from tests.tokens import PASSWORD, Tenant
from tests.world import World

pytestmark = pytest.mark.integration

# What OpenID Connect Core 2 and 3.1.3.6 require of an ID token of the code flow, and MACP adds.
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "auth_time", "azp", "at_hash"]


@pytest.fixture(scope="module")
async def world(
    module_environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    from tests.world import running_world

    async with running_world({**module_environ, **STACK}, tmp_path_factory.mktemp("openid")) as running:
        yield running


@pytest.fixture
async def browser(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=world.front_url, timeout=20, follow_redirects=False) as client:
        yield client


@pytest.fixture
async def tenant(world: World) -> Tenant:
    return await world.tokens.tenant()


def left_half_sha256(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


async def verified_id_token(browser: httpx.AsyncClient, id_token: str) -> dict[str, Any]:
    """The ID token's claims once PyJWT has checked its signature against the key set the discovery
    document points to, and its iss, aud, exp and iat."""
    discovery = (await browser.get("/.well-known/openid-configuration")).json()
    jwks = await browser.get(discovery["jwks_uri"].removeprefix(ISSUER))
    assert jwks.status_code == 200, jwks.text
    key_set = pyjwt.PyJWKSet.from_dict(jwks.json())
    header = pyjwt.get_unverified_header(id_token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": header["kid"]}
    assert header["alg"] in discovery["id_token_signing_alg_values_supported"]
    claims: dict[str, Any] = pyjwt.decode(
        id_token,
        key_set[header["kid"]],
        algorithms=["RS256"],
        audience=CONSOLE,
        issuer=discovery["issuer"],
        options={"require": REQUIRED_CLAIMS},
    )
    return claims


async def test_the_discovery_document_is_the_metadata_with_openid_s_facts(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/.well-known/openid-configuration")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"].startswith("public, max-age=")
    discovery = response.json()
    oauth = (await browser.get("/.well-known/oauth-authorization-server")).json()
    # Discovery 4.3: the issuer is the one the document was asked of, the same as RFC 8414's.
    assert discovery["issuer"] == oauth["issuer"] == ISSUER
    assert {name: discovery[name] for name in oauth} == oauth
    assert discovery["authorization_endpoint"] == f"{ISSUER}/oauth2/authorize"
    assert discovery["token_endpoint"] == f"{ISSUER}/oauth2/token"
    assert discovery["userinfo_endpoint"] == f"{ISSUER}/oauth2/userinfo"
    assert discovery["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert discovery["response_types_supported"] == ["code"]
    assert discovery["subject_types_supported"] == ["public"]
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "openid" in discovery["scopes_supported"]
    assert "conversations:read" in discovery["scopes_supported"]
    assert {*REQUIRED_CLAIMS, "nonce", "preferred_username", "tenant_id", "tier"} <= set(
        discovery["claims_supported"]
    )
    assert discovery["request_parameter_supported"] is False
    document = (await browser.get("/v1/openapi.json")).json()
    assert "get" in document["paths"]["/.well-known/openid-configuration"]


async def test_a_code_flow_with_openid_and_a_nonce_gets_a_verifiable_id_token(
    browser: httpx.AsyncClient, tenant: Tenant
) -> None:
    nonce = secrets.token_urlsafe(24)
    _, challenge = pkce()
    shown = await page(browser, request_params(challenge, scope="openid conversations:read", nonce=nonce))
    assert shown.status_code == 200, shown.text
    assert hidden_fields(shown)["nonce"] == nonce  # the page posts it back with the request
    before = int(time.time())
    posted, verifier, params = await sign_in(
        browser, tenant.username, scope="openid conversations:read", nonce=nonce
    )
    assert posted.status_code == 303, posted.text
    query = answer(posted)
    assert query["state"] == params["state"]

    tokens = await redeem(browser, query["code"], verifier)
    assert tokens.status_code == 200, tokens.text
    issued = tokens.json()
    assert issued["scope"].split() == ["openid", "conversations:read"]
    claims = await verified_id_token(browser, issued["id_token"])

    info = await browser.get(
        "/oauth2/userinfo", headers={"authorization": f"Bearer {issued['access_token']}"}
    )
    assert info.status_code == 200, info.text
    user = info.json()
    access = pyjwt.decode(issued["access_token"], options={"verify_signature": False})
    assert claims == {
        "iss": ISSUER,
        "sub": user["sub"],
        "aud": CONSOLE,
        "exp": access["exp"],
        "iat": claims["iat"],
        "auth_time": claims["auth_time"],
        "nonce": nonce,
        "azp": CONSOLE,
        "at_hash": left_half_sha256(issued["access_token"]),
        "preferred_username": tenant.username,
        "tenant_id": tenant.tenant_id,
    }
    assert claims["sub"] == access["sub"]
    assert before <= claims["auth_time"] <= claims["iat"] <= int(time.time())
    assert (
        pyjwt.get_unverified_header(issued["id_token"])["kid"]
        == pyjwt.get_unverified_header(issued["access_token"])["kid"]
    )

    # The access token works; the ID token beside it is no access token anywhere.
    assert await agents(browser, issued["access_token"]) == 200
    assert await agents(browser, issued["id_token"]) == 401
    as_bearer = await browser.get(
        "/oauth2/userinfo", headers={"authorization": f"Bearer {issued['id_token']}"}
    )
    assert as_bearer.status_code == 401
    assert as_bearer.json()["error"] == "invalid_token"

    # A refresh keeps the scope and returns no new ID token (the client keeps the sign-in's).
    refreshed = await browser.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "client_id": CONSOLE, "refresh_token": issued["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert "id_token" not in refreshed.json()
    assert refreshed.json()["scope"].split() == ["openid", "conversations:read"]


async def test_without_openid_there_is_no_id_token(browser: httpx.AsyncClient, tenant: Tenant) -> None:
    code, verifier = await code_for(browser, tenant)
    tokens = await redeem(browser, code, verifier)
    assert tokens.status_code == 200, tokens.text
    assert "id_token" not in tokens.json()
    assert "openid" not in tokens.json()["scope"].split()


async def test_a_nonce_too_long_goes_back_to_the_client(browser: httpx.AsyncClient) -> None:
    _, challenge = pkce()
    params = request_params(challenge, scope="openid", nonce="n" * 513)
    refused = await page(browser, params)
    assert refused.status_code == 303, refused.text
    query = answer(refused)
    assert query["error"] == "invalid_request"
    assert "nonce" in query["error_description"]
    assert query["state"] == params["state"]


async def test_openid_is_refused_outside_the_code_flow(browser: httpx.AsyncClient, tenant: Tenant) -> None:
    client = tenant.client
    form = {
        "grant_type": "password",
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "username": tenant.username,
        "password": PASSWORD,
    }
    plain = await browser.post("/oauth2/token", data=form)
    assert plain.status_code == 200, plain.text
    assert "id_token" not in plain.json()
    refused = await browser.post("/oauth2/token", data={**form, "scope": "openid"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_scope"
    assert "authorization_code" in refused.json()["error_description"]
