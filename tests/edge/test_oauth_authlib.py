"""A standard OAuth client library (Authlib's httpx client), unchanged, against the edge.

These tests know only an `OAuthWorld` (the edge's URL and credentials its token service accepts) and
what the RFCs promise, so they hold for any token service behind the edge: the in-memory fake here,
the real one behind Envoy (the "real" variant of `oauth_world`, an integration test).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import authlib.deprecate
import httpx
import pytest
from joserfc.jwk import KeySet

from tests.edge.conftest import OAuthWorld

# Authlib 1.9 prefers httpx2 and warns once when it falls back to httpx, which this project uses.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AUDIENCE = "urn:macp:edge"
SERVICE_AUDIENCE = "urn:macp:service:conversation"


@pytest.fixture
async def metadata(oauth_world: OAuthWorld) -> dict[str, Any]:
    """RFC 8414 discovery: everything below finds the endpoints from here, as a client would."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{oauth_world.edge_url}/.well-known/oauth-authorization-server")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture
async def app_client(oauth_world: OAuthWorld, metadata: dict[str, Any]) -> AsyncIterator[AsyncOAuth2Client]:
    """The world's confidential client, authenticating with client_secret_basic (Authlib's default)."""
    async with AsyncOAuth2Client(
        client_id=oauth_world.client_id,
        client_secret=oauth_world.client_secret,
        token_endpoint=metadata["token_endpoint"],
        timeout=10,
    ) as client:
        yield client


async def introspect(client: AsyncOAuth2Client, metadata: dict[str, Any], token: str) -> dict[str, Any]:
    response = await client.introspect_token(metadata["introspection_endpoint"], token=token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def sign_in(client: AsyncOAuth2Client, world: OAuthWorld, metadata: dict[str, Any]) -> dict[str, Any]:
    token: dict[str, Any] = await client.fetch_token(
        metadata["token_endpoint"], username=world.username, password=world.password
    )
    return token


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials(
    oauth_world: OAuthWorld, metadata: dict[str, Any], auth_method: str
) -> None:
    assert auth_method in metadata["token_endpoint_auth_methods_supported"]
    async with AsyncOAuth2Client(
        client_id=oauth_world.client_id,
        client_secret=oauth_world.client_secret,
        token_endpoint_auth_method=auth_method,
        scope=oauth_world.scope,
        timeout=10,
    ) as client:
        token = await client.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        assert token["token_type"] == "Bearer"
        assert token["scope"] == oauth_world.scope
        assert token["expires_at"] > time.time()  # Authlib's reading of expires_in
        assert "refresh_token" not in token
        claims = await introspect(client, metadata, token["access_token"])
    assert claims["active"] is True
    assert claims["client_id"] == oauth_world.client_id
    assert claims["scope"] == oauth_world.scope


async def test_password_grant_then_refresh(
    app_client: AsyncOAuth2Client, oauth_world: OAuthWorld, metadata: dict[str, Any]
) -> None:
    first = await sign_in(app_client, oauth_world, metadata)
    assert first["token_type"] == "Bearer"
    assert first["refresh_token"]
    second = await app_client.refresh_token(metadata["token_endpoint"])
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]  # rotated
    assert (await introspect(app_client, metadata, second["access_token"]))["active"] is True
    with pytest.raises(OAuthError) as reused:
        await app_client.refresh_token(metadata["token_endpoint"], refresh_token=first["refresh_token"])
    assert reused.value.error == "invalid_grant"


async def test_authlib_refreshes_an_expired_token_by_itself(
    app_client: AsyncOAuth2Client, oauth_world: OAuthWorld, metadata: dict[str, Any]
) -> None:
    first = await sign_in(app_client, oauth_world, metadata)
    updates: list[dict[str, Any]] = []

    async def update_token(token: dict[str, Any], refresh_token: str | None = None, **_: Any) -> None:
        updates.append(dict(token))

    app_client.update_token = update_token
    app_client.token["expires_at"] = int(time.time()) - 10
    await app_client.ensure_active_token(app_client.token)  # type: ignore[no-untyped-call]  # stubs: bare
    assert len(updates) == 1
    assert updates[0]["access_token"] != first["access_token"]
    assert app_client.token["expires_at"] > time.time()


async def test_token_exchange_with_an_actor(
    app_client: AsyncOAuth2Client, oauth_world: OAuthWorld, metadata: dict[str, Any]
) -> None:
    assert TOKEN_EXCHANGE in metadata["grant_types_supported"]
    user = await sign_in(app_client, oauth_world, metadata)
    async with AsyncOAuth2Client(
        client_id=oauth_world.actor_client_id, client_secret=oauth_world.actor_client_secret, timeout=10
    ) as actor_client:
        actor = await actor_client.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    exchanged = await app_client.fetch_token(
        metadata["token_endpoint"],
        grant_type=TOKEN_EXCHANGE,
        subject_token=user["access_token"],
        subject_token_type=ACCESS_TOKEN_TYPE,
        actor_token=actor["access_token"],
        actor_token_type=ACCESS_TOKEN_TYPE,
        audience=AUDIENCE,
    )
    assert exchanged["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert exchanged["token_type"] == "Bearer"
    assert exchanged["access_token"] not in (user["access_token"], actor["access_token"])
    assert set(exchanged["scope"].split()) <= set(user["scope"].split())  # never wider than the subject's
    claims = await introspect(app_client, metadata, exchanged["access_token"])
    assert claims["active"] is True
    assert AUDIENCE in claims["aud"]


async def test_an_exchange_of_a_token_that_is_not_one_is_an_invalid_request(
    app_client: AsyncOAuth2Client, metadata: dict[str, Any]
) -> None:
    with pytest.raises(OAuthError) as refused:
        await app_client.fetch_token(
            metadata["token_endpoint"],
            grant_type=TOKEN_EXCHANGE,
            subject_token="not-a-token",
            subject_token_type=ACCESS_TOKEN_TYPE,
        )
    assert refused.value.error == "invalid_request"  # RFC 8693 section 2.2.2


async def test_revocation(
    app_client: AsyncOAuth2Client, oauth_world: OAuthWorld, metadata: dict[str, Any]
) -> None:
    token = await sign_in(app_client, oauth_world, metadata)
    response = await app_client.revoke_token(  # type: ignore[no-untyped-call]  # the stubs leave it bare
        metadata["revocation_endpoint"], token=token["refresh_token"], token_type_hint="refresh_token"
    )
    assert response.status_code == 200
    assert await introspect(app_client, metadata, token["refresh_token"]) == {"active": False}
    with pytest.raises(OAuthError) as revoked:
        await app_client.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
    assert revoked.value.error == "invalid_grant"


async def test_a_wrong_secret_is_invalid_client(oauth_world: OAuthWorld, metadata: dict[str, Any]) -> None:
    async with AsyncOAuth2Client(
        client_id=oauth_world.client_id, client_secret="wrong", timeout=10
    ) as client:
        with pytest.raises(OAuthError) as refused:
            await client.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert refused.value.error == "invalid_client"


async def test_an_unknown_scope_is_invalid_scope(
    app_client: AsyncOAuth2Client, metadata: dict[str, Any]
) -> None:
    with pytest.raises(OAuthError) as refused:
        await app_client.fetch_token(
            metadata["token_endpoint"], grant_type="client_credentials", scope="no-such:scope"
        )
    assert refused.value.error == "invalid_scope"


async def test_a_registered_client_gets_tokens(oauth_world: OAuthWorld, metadata: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            metadata["registration_endpoint"],
            json={
                "client_name": "Edge test bot",
                "grant_types": ["client_credentials"],
                "tenant_id": oauth_world.tenant_id,  # a third-party client belongs to a tenant
            },
            headers={"authorization": f"Bearer {oauth_world.initial_access_token}"},
        )
    assert response.status_code == 201, response.text
    registered = response.json()
    async with AsyncOAuth2Client(
        client_id=registered["client_id"], client_secret=registered["client_secret"], timeout=10
    ) as client:
        token = await client.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert token["token_type"] == "Bearer"


async def test_the_jwks_is_a_key_set_a_jose_library_loads(metadata: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(metadata["jwks_uri"])
    assert response.status_code == 200
    key_set = KeySet.import_key_set(response.json())
    assert key_set.keys
    assert all(key.kid for key in key_set.keys)


@pytest.fixture
def real_oauth_world(request: pytest.FixtureRequest) -> OAuthWorld:
    """The real token service behind the edge, for what the fake does not model."""
    world: OAuthWorld = request.getfixturevalue("_real_world")
    return world


@pytest.mark.integration
async def test_no_user_facing_client_gets_a_service_audience(real_oauth_world: OAuthWorld) -> None:
    """A service port skips the edge's limits and checks: only MACP's internal clients get its
    audience. A consumer or partner client, and a user signing in, get the edge's only."""
    world = real_oauth_world
    app = (world.client_id, world.client_secret)
    partner = (world.actor_client_id, world.actor_client_secret)
    sign_in = {"grant_type": "password", "username": world.username, "password": world.password}
    every_service = [f"urn:macp:service:{name}" for name in ("conversation", "orchestrator", "metering")]
    async with httpx.AsyncClient(base_url=world.edge_url, timeout=10) as http:
        user = await http.post("/oauth2/token", data=sign_in, auth=app)
        assert user.status_code == 200, user.text
        cases: list[tuple[str, tuple[str, str], dict[str, str | list[str]]]] = [
            ("client credentials", app, {"grant_type": "client_credentials", "resource": SERVICE_AUDIENCE}),
            ("partner", partner, {"grant_type": "client_credentials", "audience": SERVICE_AUDIENCE}),
            ("password", app, {**sign_in, "audience": SERVICE_AUDIENCE}),
            ("every service at once", app, {**sign_in, "resource": every_service}),
            (
                "exchange",
                app,
                {
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": user.json()["access_token"],
                    "subject_token_type": ACCESS_TOKEN_TYPE,
                    "audience": SERVICE_AUDIENCE,
                },
            ),
        ]
        for name, client, form in cases:
            response = await http.post("/oauth2/token", data=form, auth=client)
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"] == "invalid_target", name


@pytest.mark.integration
async def test_registration_refuses_unsafe_redirects_and_service_held_scopes(
    real_oauth_world: OAuthWorld,
) -> None:
    world = real_oauth_world
    base = {"client_name": "browser app", "tenant_id": world.tenant_id}
    cases = [
        ({**base, "redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({**base, "redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
        ({**base, "redirect_uris": ["http://app.example/cb"]}, "invalid_redirect_uri"),
        ({**base, "redirect_uris": ["https://*.app.example/cb"]}, "invalid_redirect_uri"),
        (
            {**base, "client_class": "CLIENT_CLASS_CONSUMER", "scope": "conversations:read agents:generate"},
            "invalid_client_metadata",
        ),
        (
            {**base, "client_class": "CLIENT_CLASS_CONSUMER", "scope": "usage:write"},
            "invalid_client_metadata",
        ),
    ]
    headers = {"authorization": f"Bearer {world.initial_access_token}"}
    async with httpx.AsyncClient(base_url=world.edge_url, timeout=10) as http:
        for document, error in cases:
            response = await http.post("/oauth2/register", json=document, headers=headers)
            assert response.status_code == 400, (document, response.text)
            assert response.json()["error"] == error, document


@pytest.mark.integration
async def test_introspection_needs_the_callers_real_credentials(real_oauth_world: OAuthWorld) -> None:
    """RFC 7662 section 2.1: a made-up client id or a wrong secret learns nothing of a user's token."""
    world = real_oauth_world
    app = (world.client_id, world.client_secret)
    sign_in = {"grant_type": "password", "username": world.username, "password": world.password}
    async with httpx.AsyncClient(base_url=world.edge_url, timeout=10) as http:
        token = (await http.post("/oauth2/token", data=sign_in, auth=app)).json()["access_token"]
        for auth in (("made-up-client", "guess"), (world.client_id, "wrong secret")):
            response = await http.post("/oauth2/introspect", data={"token": token}, auth=auth)
            assert response.status_code == 401, response.text
            assert response.json()["error"] == "invalid_client"
        found = await http.post("/oauth2/introspect", data={"token": token}, auth=app)
        assert found.json()["active"] is True
        assert found.json()["username"] == world.username


@pytest.mark.integration
async def test_password_guessing_is_answered_429_with_retry_after(real_oauth_world: OAuthWorld) -> None:
    """The token service locks an account after 5 failed passwords (a username nobody holds counts
    alike, so the world's user is left alone); the edge answers the RFC 6749 error with 429."""
    world = real_oauth_world
    app = (world.client_id, world.client_secret)
    guess = {"grant_type": "password", "username": f"nobody-{time.time_ns()}", "password": "guess"}
    async with httpx.AsyncClient(base_url=world.edge_url, timeout=10) as http:
        statuses = [(await http.post("/oauth2/token", data=guess, auth=app)).status_code for _ in range(5)]
        assert statuses == [400] * 5
        locked = await http.post("/oauth2/token", data=guess, auth=app)
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"] == "invalid_grant"
    assert int(locked.headers["retry-after"]) >= 1
