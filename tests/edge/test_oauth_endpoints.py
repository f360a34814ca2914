"""The other OAuth endpoints: revocation, introspection, registration, the JWKS and RFC 8414 metadata,
and how all of them appear in the OpenAPI document."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import httpx
import pytest
from macp.token.v1 import token_service_pb2 as pb

from tests.edge.conftest import FakeToken, expect_oauth_error
from tests.edge.fake_token_service import INITIAL_ACCESS_TOKEN

CLI = ("macp-cli", "cli-secret")
REGISTRATION = {"authorization": f"Bearer {INITIAL_ACCESS_TOKEN}"}


async def issue(http: httpx.AsyncClient, **form: str) -> dict[str, Any]:
    fields = {"grant_type": "password", "username": "ada", "password": "correct horse battery staple", **form}
    response = await http.post("/oauth2/token", data=fields, auth=CLI)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def introspect(http: httpx.AsyncClient, token: str, **form: str) -> httpx.Response:
    return await http.post("/oauth2/introspect", data={"token": token, **form}, auth=CLI)


# Revocation (RFC 7009).


async def test_revoking_a_token_makes_it_inactive(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    tokens = await issue(http)
    response = await http.post(
        "/oauth2/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=CLI,
    )
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    sent = fake_token.service.last(pb.RevokeRequest)
    assert sent == pb.RevokeRequest(
        token=tokens["refresh_token"],
        token_type_hint="refresh_token",
        client_id="macp-cli",
        client_secret="cli-secret",
    )
    for token in (tokens["refresh_token"], tokens["access_token"]):
        assert (await introspect(http, token)).json() == {"active": False}


async def test_revoking_an_unknown_token_succeeds(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/oauth2/revoke",
        data={"token": "never-issued", "client_id": "macp-cli", "client_secret": "cli-secret"},
    )
    assert response.status_code == 200


async def test_an_unknown_hint_is_ignored_and_token_id_is_passed_on(
    http: httpx.AsyncClient, fake_token: FakeToken
) -> None:
    response = await http.post("/oauth2/revoke", data={"token": "t", "token_type_hint": "id_token"}, auth=CLI)
    assert response.status_code == 200
    sent = fake_token.service.last(pb.RevokeRequest)
    assert isinstance(sent, pb.RevokeRequest)
    assert sent.token_type_hint == ""
    assert (await http.post("/oauth2/revoke", data={"token_id": "jti-1"}, auth=CLI)).status_code == 200
    sent = fake_token.service.last(pb.RevokeRequest)
    assert isinstance(sent, pb.RevokeRequest)
    assert (sent.token, sent.token_id) == ("", "jti-1")


async def test_revocation_errors(http: httpx.AsyncClient) -> None:
    expect_oauth_error(await http.post("/oauth2/revoke", data={}, auth=CLI), 400, "invalid_request", "token")
    response = await http.post("/oauth2/revoke", data={"token": "t"}, auth=("macp-cli", "wrong"))
    expect_oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


# Introspection (RFC 7662).


async def test_introspecting_an_active_token(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    tokens = await issue(http, scope="conversations:read")
    response = await introspect(http, tokens["access_token"], token_type_hint="access_token")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["active"] is True
    assert body["scope"] == "conversations:read"
    assert body["client_id"] == "macp-cli"
    assert body["sub"] == "ada"
    assert body["token_type"] == "Bearer"
    assert body["aud"] == ["urn:macp:edge"]
    assert isinstance(body["exp"], int)
    assert body["exp"] > body["iat"]
    assert "principal" not in body  # MACP's principal stays inside the mesh
    sent = fake_token.service.last(pb.IntrospectRequest)
    assert sent == pb.IntrospectRequest(token=tokens["access_token"], token_type_hint="access_token")


async def test_an_unknown_token_is_inactive(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/oauth2/introspect",
        data={"token": "never-issued", "client_id": "macp-cli", "client_secret": "cli-secret"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "token: value length must be at most 8192 characters"),
        (grpc.StatusCode.UNAUTHENTICATED, "invalid_token: signature does not verify"),
        (grpc.StatusCode.FAILED_PRECONDITION, "expired"),
    ],
)
async def test_a_token_the_service_refuses_is_inactive(
    http: httpx.AsyncClient, fake_token: FakeToken, code: grpc.StatusCode, message: str
) -> None:
    fake_token.service.fail_next("Introspect", code, message)
    response = await introspect(http, "t")
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}


async def test_introspection_needs_an_authenticated_client(http: httpx.AsyncClient) -> None:
    response = await http.post("/oauth2/introspect", data={"token": "t"})
    expect_oauth_error(response, 401, "invalid_client")
    response = await http.post("/oauth2/introspect", data={"token": "t", "client_id": "public-app"})
    expect_oauth_error(response, 401, "invalid_client", "secret")
    expect_oauth_error(await http.post("/oauth2/introspect", data={}, auth=CLI), 400, "invalid_request")


async def test_introspection_by_a_made_up_client_is_refused(
    http: httpx.AsyncClient, fake_token: FakeToken
) -> None:
    """The edge hands the caller's credentials to the token service, which authenticates them
    (RFC 7662 section 2.1): a made-up client or a wrong secret learns nothing about a real token."""
    tokens = await issue(http)
    for auth in (("made-up-client", "guess"), ("macp-cli", "wrong")):
        response = await http.post("/oauth2/introspect", data={"token": tokens["access_token"]}, auth=auth)
        expect_oauth_error(response, 401, "invalid_client")
        assert "active" not in response.json()


async def test_an_unavailable_token_service_is_not_an_inactive_token(
    http: httpx.AsyncClient, fake_token: FakeToken
) -> None:
    fake_token.service.fail_next("Introspect", grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
    expect_oauth_error(await introspect(http, "t"), 503, "temporarily_unavailable")


# Dynamic client registration (RFC 7591).

NEW_CLIENT = {
    "client_name": "Report bot",
    "redirect_uris": ["https://bot.example/callback"],
    "grant_types": ["client_credentials"],
    "token_endpoint_auth_method": "client_secret_post",
    "scope": "conversations:read",
    "contacts": ["ops@bot.example"],
    "jwks": {"keys": []},  # metadata the server does not understand is ignored
}


async def test_registering_a_client_it_can_then_use(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    response = await http.post(
        "/oauth2/register", json={**NEW_CLIENT, "tenant_id": "acme"}, headers=REGISTRATION
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["client_id"]
    assert body["client_secret"]
    assert isinstance(body["client_id_issued_at"], int)
    assert body["client_secret_expires_at"] == 0
    for name in (
        "client_name",
        "redirect_uris",
        "grant_types",
        "token_endpoint_auth_method",
        "scope",
        "contacts",
    ):
        assert body[name] == NEW_CLIENT[name]
    assert body["client_class"] == "CLIENT_CLASS_THIRD_PARTY"
    assert "jwks" not in body
    sent = fake_token.service.last(pb.RegisterClientRequest)
    assert isinstance(sent, pb.RegisterClientRequest)
    assert (sent.initial_access_token, sent.tenant_id) == (INITIAL_ACCESS_TOKEN, "acme")
    assert sent.metadata.client_name == "Report bot"

    form = {
        "grant_type": "client_credentials",
        "client_id": body["client_id"],
        "client_secret": body["client_secret"],
    }
    token = await http.post("/oauth2/token", data=form)
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "conversations:read"


async def test_a_public_client_gets_no_secret(http: httpx.AsyncClient) -> None:
    metadata = {"client_name": "CLI", "token_endpoint_auth_method": "none", "grant_types": ["password"]}
    response = await http.post("/oauth2/register", json=metadata, headers=REGISTRATION)
    assert response.status_code == 201, response.text
    body = response.json()
    assert "client_secret" not in body
    assert "client_secret_expires_at" not in body


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "invalid_token"),
        ({"authorization": "Bearer wrong"}, "invalid_token"),
        ({"authorization": "Basic eDp5"}, "invalid_token"),
    ],
    ids=["none", "wrong", "not-bearer"],
)
async def test_registration_needs_the_initial_access_token(
    http: httpx.AsyncClient, headers: dict[str, str], error: str
) -> None:
    response = await http.post("/oauth2/register", json=NEW_CLIENT, headers=headers)
    expect_oauth_error(response, 401, error)
    assert response.headers["www-authenticate"] == f'Bearer error="{error}"'


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        ({**NEW_CLIENT, "redirect_uris": ["not a uri"]}, "invalid_redirect_uri", "redirect_uris"),
        (
            {**NEW_CLIENT, "redirect_uris": "https://bot.example/callback"},
            "invalid_client_metadata",
            "redirect_uris",
        ),
        ({**NEW_CLIENT, "client_name": ""}, "invalid_client_metadata", "client_name"),
        ({**NEW_CLIENT, "grant_types": ["implicit"]}, "invalid_client_metadata", "grant_types"),
        ({**NEW_CLIENT, "tenant_id": 7}, "invalid_client_metadata", "tenant_id"),
        (["not", "an", "object"], "invalid_client_metadata", "object"),
    ],
)
async def test_bad_metadata(http: httpx.AsyncClient, body: object, error: str, fragment: str) -> None:
    response = await http.post("/oauth2/register", json=body, headers=REGISTRATION)
    expect_oauth_error(response, 400, error, fragment)


async def test_registration_must_be_json(http: httpx.AsyncClient) -> None:
    response = await http.post("/oauth2/register", data={"client_name": "x"}, headers=REGISTRATION)
    expect_oauth_error(response, 400, "invalid_client_metadata", "application/json")
    response = await http.post(
        "/oauth2/register", content=b"{", headers={**REGISTRATION, "content-type": "application/json"}
    )
    expect_oauth_error(response, 400, "invalid_client_metadata", "JSON")


async def test_a_registration_the_service_refuses_by_name(
    http: httpx.AsyncClient, fake_token: FakeToken
) -> None:
    fake_token.service.fail_next(
        "RegisterClient", grpc.StatusCode.PERMISSION_DENIED, "access_denied: INTERNAL needs macp:admin"
    )
    response = await http.post("/oauth2/register", json=NEW_CLIENT, headers=REGISTRATION)
    expect_oauth_error(response, 400, "access_denied", "macp:admin")
    fake_token.service.fail_next("RegisterClient", grpc.StatusCode.PERMISSION_DENIED, "no")
    response = await http.post("/oauth2/register", json=NEW_CLIENT, headers=REGISTRATION)
    expect_oauth_error(response, 403, "insufficient_scope")
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'


# The published documents.


async def test_jwks(http: httpx.AsyncClient) -> None:
    response = await http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=60"
    [key] = response.json()["keys"]
    assert set(key) == {"kty", "use", "kid", "alg", "n", "e"}  # empty fields are left out
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")


async def test_jwks_when_the_token_service_is_down(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    fake_token.service.fail_next("GetJwks", grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
    response = await http.get("/.well-known/jwks.json")
    assert response.status_code == 503
    assert response.json()["code"] == "UNAVAILABLE"  # the edge's own error shape: not an OAuth endpoint


async def test_authorization_server_metadata(http: httpx.AsyncClient, edge_url: str) -> None:
    response = await http.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    assert response.headers["cache-control"].startswith("public, max-age=")
    metadata = response.json()
    assert metadata["issuer"] == edge_url
    assert metadata["token_endpoint"] == f"{edge_url}/oauth2/token"
    assert metadata["jwks_uri"] == f"{edge_url}/.well-known/jwks.json"
    assert metadata["registration_endpoint"] == f"{edge_url}/oauth2/register"
    assert metadata["revocation_endpoint"] == f"{edge_url}/oauth2/revoke"
    assert metadata["introspection_endpoint"] == f"{edge_url}/oauth2/introspect"
    assert metadata["grant_types_supported"] == [
        "authorization_code",
        "client_credentials",
        "password",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ]
    assert metadata["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    for endpoint in ("token_endpoint", "jwks_uri", "registration_endpoint", "revocation_endpoint"):
        path = metadata[endpoint].removeprefix(edge_url)
        assert (await http.options(path)).status_code != 404
    # The sign-in page (tests/edge/test_sign_in.py); a client the token service does not vouch for
    # gets a page, never a redirect.
    assert metadata["authorization_endpoint"] == f"{edge_url}/oauth2/authorize"
    refused = await http.get(
        "/oauth2/authorize?response_type=code&client_id=x&redirect_uri=https://evil.example/"
    )
    assert refused.status_code >= 400
    assert refused.headers["content-type"].startswith("text/html")
    assert "location" not in refused.headers


# The OpenAPI document.


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


async def test_the_openapi_document_describes_the_oauth_endpoints(http: httpx.AsyncClient) -> None:
    document = (await http.get("/v1/openapi.json")).json()
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    form = "application/x-www-form-urlencoded"
    for path in ("/oauth2/token", "/oauth2/revoke", "/oauth2/introspect"):
        operation = paths[path]["post"]
        assert list(operation["requestBody"]["content"]) == [form]
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/OAuthError"
        }
    register = paths["/oauth2/register"]["post"]
    # 429: the rate limits, which every route counts against.
    assert list(register["responses"]) == ["201", "400", "401", "403", "413", "503", "429"]
    assert "get" in paths["/.well-known/jwks.json"]
    assert "get" in paths["/.well-known/oauth-authorization-server"]
    grants = [option["properties"]["grant_type"]["const"] for option in schemas["OAuthTokenRequest"]["oneOf"]]
    assert grants == [
        "client_credentials",
        "password",
        "refresh_token",
        "authorization_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ]
    token_response = schemas["OAuthTokenResponse"]["properties"]
    assert token_response["expires_in"] == {"type": "integer"}  # a JSON number, as RFC 6749 has it
    assert "actor_chain" not in token_response
    assert "redirect_uris" in schemas["OAuthClientMetadata"]["properties"]
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


# One credential per request (RFC 6749 section 2.3).


@pytest.mark.parametrize(
    "path", ["/oauth2/token", "/oauth2/revoke", "/oauth2/introspect", "/oauth2/register"]
)
async def test_two_authorization_headers_are_refused(http: httpx.AsyncClient, path: str) -> None:
    cli = "Basic " + base64.b64encode(b"macp-cli:cli-secret").decode()
    for second in (cli, "Basic " + base64.b64encode(b"agent-runner:runner-secret").decode(), "Bearer x"):
        headers = [("authorization", cli), ("authorization", second)]
        form = {"grant_type": "client_credentials", "token": "t"}
        response = await http.post(path, data=form, headers=headers)
        expect_oauth_error(response, 400, "invalid_request", "one Authorization header")


async def test_two_client_ids_are_refused(http: httpx.AsyncClient) -> None:
    body = "grant_type=client_credentials&client_id=macp-cli&client_id=agent-runner&client_secret=cli-secret"
    response = await http.post(
        "/oauth2/token", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    expect_oauth_error(response, 400, "invalid_request", "client_id")
