"""POST /oauth2/token: every grant, both client authentication methods, and each error shape."""

from __future__ import annotations

import base64
from urllib.parse import quote

import grpc
import httpx
import pytest
from macp.token.v1 import token_service_pb2 as pb

from tests.edge.conftest import FakeToken, expect_oauth_error

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
CLI = ("macp-cli", "cli-secret")


def basic(client_id: str, secret: str) -> dict[str, str]:
    """HTTP Basic as RFC 6749 section 2.3.1 has it: id and secret form-encoded, then base64."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"authorization": f"Basic {base64.b64encode(pair).decode()}"}


def expect_token(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body: dict[str, object] = response.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["access_token"], str)
    assert body["access_token"]
    assert isinstance(body["expires_in"], int)
    return body


async def test_client_credentials_with_http_basic(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    response = await http.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "scope": "conversations:read"}, auth=CLI
    )
    body = expect_token(response)
    assert body["scope"] == "conversations:read"
    assert body["expires_in"] == 900
    assert "refresh_token" not in body
    sent = fake_token.service.last(pb.IssueTokenRequest)
    assert sent == pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
        client_id="macp-cli",
        client_secret="cli-secret",
        scope="conversations:read",
    )


async def test_client_credentials_with_form_fields(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    form = {"grant_type": "client_credentials", "client_id": "macp-cli", "client_secret": "cli-secret"}
    body = expect_token(await http.post("/oauth2/token", data=form))
    assert body["scope"] == "conversations:read conversations:write"
    sent = fake_token.service.last(pb.IssueTokenRequest)
    assert isinstance(sent, pb.IssueTokenRequest)
    assert (sent.client_id, sent.client_secret) == ("macp-cli", "cli-secret")


async def test_basic_credentials_are_form_decoded(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    fake_token.service.add_client("svc:reporter+1", "p@ss:word%", ("conversations:read",))
    response = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers=basic("svc:reporter+1", "p@ss:word%"),
    )
    expect_token(response)
    sent = fake_token.service.last(pb.IssueTokenRequest)
    assert isinstance(sent, pb.IssueTokenRequest)
    assert (sent.client_id, sent.client_secret) == ("svc:reporter+1", "p@ss:word%")


async def test_basic_with_the_client_id_repeated_in_the_form_is_accepted(http: httpx.AsyncClient) -> None:
    form = {"grant_type": "client_credentials", "client_id": "macp-cli"}
    expect_token(await http.post("/oauth2/token", data=form, auth=CLI))


async def test_password_grant_returns_a_refresh_token(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    form = {"grant_type": "password", "username": "ada", "password": "correct horse battery staple"}
    body = expect_token(await http.post("/oauth2/token", data=form, auth=CLI))
    assert body["refresh_token"]
    sent = fake_token.service.last(pb.IssueTokenRequest)
    assert isinstance(sent, pb.IssueTokenRequest)
    assert sent.grant_type == pb.GRANT_TYPE_PASSWORD
    assert (sent.username, sent.password) == ("ada", "correct horse battery staple")


async def test_refresh_grant_rotates_and_a_reused_refresh_token_is_an_invalid_grant(
    http: httpx.AsyncClient,
) -> None:
    form = {"grant_type": "password", "username": "ada", "password": "correct horse battery staple"}
    first = expect_token(await http.post("/oauth2/token", data=form, auth=CLI))
    refresh = {"grant_type": "refresh_token", "refresh_token": str(first["refresh_token"])}
    second = expect_token(await http.post("/oauth2/token", data=refresh, auth=CLI))
    assert second["refresh_token"] not in (None, first["refresh_token"])
    assert second["access_token"] != first["access_token"]
    reused = await http.post("/oauth2/token", data=refresh, auth=CLI)
    expect_oauth_error(reused, 400, "invalid_grant", "already used")


async def test_resource_and_audience_reach_issue_token(
    http: httpx.AsyncClient, fake_token: FakeToken
) -> None:
    form = {
        "grant_type": "client_credentials",
        "resource": "urn:macp:service:conversation",
        "audience": "urn:macp:edge",
    }
    expect_token(await http.post("/oauth2/token", data=form, auth=CLI))
    sent = fake_token.service.last(pb.IssueTokenRequest)
    assert isinstance(sent, pb.IssueTokenRequest)
    assert list(sent.resource) == ["urn:macp:service:conversation"]
    assert list(sent.audience) == ["urn:macp:edge"]


async def test_token_exchange_maps_every_rfc_8693_field(
    http: httpx.AsyncClient, fake_token: FakeToken
) -> None:
    user = expect_token(
        await http.post(
            "/oauth2/token",
            data={"grant_type": "password", "username": "ada", "password": "correct horse battery staple"},
            auth=CLI,
        )
    )
    actor = expect_token(
        await http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, auth=("agent-runner", "runner-secret")
        )
    )
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": str(user["access_token"]),
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token": str(actor["access_token"]),
        "actor_token_type": ACCESS_TOKEN_TYPE,
        "resource": ["urn:macp:service:conversation", "urn:macp:service:orchestrator"],  # repeated
        "audience": ["urn:macp:service:conversation", "urn:macp:edge"],
        "scope": "conversations:read",
        "requested_token_type": ACCESS_TOKEN_TYPE,
    }
    response = await http.post("/oauth2/token", data=form, auth=CLI)
    body = expect_token(response)
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["scope"] == "conversations:read"
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
    sent = fake_token.service.last(pb.ExchangeTokenRequest)
    assert sent == pb.ExchangeTokenRequest(
        client_id="macp-cli",
        client_secret="cli-secret",
        subject_token=str(user["access_token"]),
        subject_token_type=ACCESS_TOKEN_TYPE,
        actor_token=str(actor["access_token"]),
        actor_token_type=ACCESS_TOKEN_TYPE,
        resource=["urn:macp:service:conversation", "urn:macp:service:orchestrator"],
        audience=["urn:macp:service:conversation", "urn:macp:edge"],
        scope="conversations:read",
        requested_token_type=ACCESS_TOKEN_TYPE,
    )


async def test_empty_parameters_count_as_absent(http: httpx.AsyncClient, fake_token: FakeToken) -> None:
    form = {"grant_type": "client_credentials", "scope": "", "client_id": "", "client_secret": ""}
    expect_token(await http.post("/oauth2/token", data=form, auth=CLI))
    sent = fake_token.service.last(pb.IssueTokenRequest)
    assert isinstance(sent, pb.IssueTokenRequest)
    assert sent.scope == ""


@pytest.mark.parametrize(
    ("form", "error", "fragment"),
    [
        ({"scope": "conversations:read"}, "invalid_request", "grant_type"),
        ({"grant_type": "implicit"}, "unsupported_grant_type", "implicit"),
        ({"grant_type": "authorization_code", "code": "abc"}, "invalid_request", "redirect_uri"),
        ({"grant_type": "password", "username": "ada"}, "invalid_request", "password"),
        ({"grant_type": "refresh_token"}, "invalid_request", "refresh_token"),
        (
            {"grant_type": TOKEN_EXCHANGE, "subject_token_type": ACCESS_TOKEN_TYPE},
            "invalid_request",
            "subject_token",
        ),
        ({"grant_type": "password", "username": "ada", "password": "wrong"}, "invalid_grant", "password"),
        ({"grant_type": "refresh_token", "refresh_token": "never-issued"}, "invalid_grant", ""),
        ({"grant_type": "client_credentials", "scope": "billing:admin"}, "invalid_scope", "billing:admin"),
        # The validation interceptor refuses the scope's syntax before the service runs.
        ({"grant_type": "client_credentials", "scope": "bad\\scope"}, "invalid_scope", "scope"),
        ({"grant_type": "client_credentials", "audience": "https://elsewhere.example"}, "invalid_target", ""),
        ({"grant_type": "client_credentials", "resource": "not a uri"}, "invalid_target", "resource"),
        (
            {"grant_type": TOKEN_EXCHANGE, "subject_token": "x", "subject_token_type": "urn:example:saml"},
            "invalid_request",
            "subject_token_type",
        ),
    ],
)
async def test_request_errors_are_400(
    http: httpx.AsyncClient, form: dict[str, str], error: str, fragment: str
) -> None:
    expect_oauth_error(await http.post("/oauth2/token", data=form, auth=CLI), 400, error, fragment)


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        (basic("macp-cli", "wrong"), {}),
        ({}, {"client_id": "macp-cli", "client_secret": "wrong"}),
        ({}, {"client_id": "nobody", "client_secret": "x"}),
        ({}, {}),
    ],
    ids=["basic-wrong-secret", "post-wrong-secret", "unknown-client", "no-authentication"],
)
async def test_client_failures_are_401_with_a_basic_challenge(
    http: httpx.AsyncClient, headers: dict[str, str], form: dict[str, str]
) -> None:
    response = await http.post(
        "/oauth2/token", data={"grant_type": "client_credentials", **form}, headers=headers
    )
    expect_oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize(
    "header", ["Basic !!!not-base64", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest x"]
)
async def test_malformed_authorization_is_invalid_client(http: httpx.AsyncClient, header: str) -> None:
    response = await http.post(
        "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"authorization": header}
    )
    expect_oauth_error(response, 401, "invalid_client")


async def test_a_public_client_cannot_use_client_credentials(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": "public-app"}
    )
    expect_oauth_error(response, 401, "invalid_client", "secret")


async def test_a_public_client_signs_a_user_in_with_its_id_alone(
    http: httpx.AsyncClient, fake_token: FakeToken
) -> None:
    form = {
        "grant_type": "password",
        "client_id": "public-app",
        "username": "ada",
        "password": "correct horse battery staple",
    }
    expect_token(await http.post("/oauth2/token", data=form))
    sent = fake_token.service.last(pb.IssueTokenRequest)
    assert isinstance(sent, pb.IssueTokenRequest)
    assert (sent.client_id, sent.client_secret) == ("public-app", "")


async def test_two_authentication_methods_at_once_are_refused(http: httpx.AsyncClient) -> None:
    form = {"grant_type": "client_credentials", "client_secret": "cli-secret"}
    expect_oauth_error(await http.post("/oauth2/token", data=form, auth=CLI), 400, "invalid_request", "only")
    form = {"grant_type": "client_credentials", "client_id": "agent-runner"}
    expect_oauth_error(
        await http.post("/oauth2/token", data=form, auth=CLI), 400, "invalid_request", "differs"
    )


async def test_a_repeated_parameter_is_refused(http: httpx.AsyncClient) -> None:
    body = "grant_type=client_credentials&scope=conversations:read&scope=conversations:write"
    response = await http.post(
        "/oauth2/token",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=CLI,
    )
    expect_oauth_error(response, 400, "invalid_request", "scope")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"grant_type": "client_credentials"}', "application/json"),
        (b"grant_type=client_credentials", "text/plain"),
        (b"grant_type=%FF%FE", "application/x-www-form-urlencoded"),
    ],
    ids=["json", "text", "not-utf-8"],
)
async def test_anything_but_a_utf8_form_is_invalid_request(
    http: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await http.post(
        "/oauth2/token", content=content, headers={"content-type": content_type}, auth=CLI
    )
    expect_oauth_error(response, 400, "invalid_request")


async def test_a_body_over_the_limit_is_413_in_the_oauth_shape(http: httpx.AsyncClient) -> None:
    form = {"grant_type": "client_credentials", "scope": "x" * 5000}
    expect_oauth_error(await http.post("/oauth2/token", data=form, auth=CLI), 413, "invalid_request", "4096")


@pytest.mark.parametrize(
    ("code", "message", "status", "error"),
    [
        # The service names the OAuth error: the name wins over the status code.
        (grpc.StatusCode.PERMISSION_DENIED, "access_denied: delegation deeper than 3", 400, "access_denied"),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "unauthorized_client: grant not allowed",
            400,
            "unauthorized_client",
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT: upper case too", 400, "invalid_grant"),
        # A bare status: the endpoint's default.
        (grpc.StatusCode.UNAUTHENTICATED, "who are you", 401, "invalid_client"),
        (grpc.StatusCode.PERMISSION_DENIED, "no", 400, "unauthorized_client"),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad", 400, "invalid_request"),
        (grpc.StatusCode.FAILED_PRECONDITION, "revoked", 400, "invalid_grant"),
        # Not the client's fault: the edge's gRPC table gives the status.
        (grpc.StatusCode.UNAVAILABLE, "upstream connect error", 503, "temporarily_unavailable"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", 429, "temporarily_unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "too slow", 504, "temporarily_unavailable"),
        (grpc.StatusCode.INTERNAL, "internal error", 500, "server_error"),
        (grpc.StatusCode.UNIMPLEMENTED, "IssueToken is not implemented yet", 501, "server_error"),
    ],
)
async def test_service_statuses_map_to_oauth_errors(
    http: httpx.AsyncClient,
    fake_token: FakeToken,
    code: grpc.StatusCode,
    message: str,
    status: int,
    error: str,
) -> None:
    fake_token.service.fail_next("IssueToken", code, message)
    response = await http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=CLI)
    expect_oauth_error(response, status, error)


async def test_get_is_not_allowed(http: httpx.AsyncClient) -> None:
    assert (await http.get("/oauth2/token")).status_code == 405


@pytest.mark.parametrize(
    ("message", "error", "retry_after"),
    [
        ("invalid_grant: too many failed sign-ins for this account; retry after 7 s", "invalid_grant", "7"),
        (
            "invalid_client: too many failed authentications of this client; retry after 2 s",
            "invalid_client",
            "2",
        ),
    ],
)
async def test_a_locked_account_or_client_is_429_with_retry_after(
    http: httpx.AsyncClient, fake_token: FakeToken, message: str, error: str, retry_after: str
) -> None:
    """The token service's guessing limit: the error a wrong credential gets, as 429 with the wait."""
    fake_token.service.fail_next("IssueToken", grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    response = await http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=CLI)
    expect_oauth_error(response, 429, error, "too many failed")
    assert response.headers["retry-after"] == retry_after
