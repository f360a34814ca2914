"""The one table from a token service status to an OAuth error, and the edge's issuer setting."""

from __future__ import annotations

from http import HTTPStatus

import grpc
import pytest

from services.edge.oauth.errors import OAUTH_STATUS, STATUS_DEFAULTS, Endpoint, OAuthError, oauth_error_of
from services.edge.settings import EdgeSettings
from services.runtime.settings import Env, SettingsError

CLIENT, REGISTRATION = Endpoint.CLIENT, Endpoint.REGISTRATION
Code = grpc.StatusCode


def failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("endpoint", "code", "details", "error", "status", "description"),
    [
        # Named by the service: the name decides, whatever the status.
        (
            CLIENT,
            Code.INVALID_ARGUMENT,
            "invalid_grant: refresh token reused",
            "invalid_grant",
            400,
            "refresh token reused",
        ),
        (CLIENT, Code.UNAUTHENTICATED, "invalid_client: wrong secret", "invalid_client", 401, "wrong secret"),
        (
            CLIENT,
            Code.INVALID_ARGUMENT,
            "invalid_target: unknown audience x",
            "invalid_target",
            400,
            "unknown audience x",
        ),
        (CLIENT, Code.INVALID_ARGUMENT, "INVALID_SCOPE: admin", "invalid_scope", 400, "admin"),
        (CLIENT, Code.PERMISSION_DENIED, "access_denied: too deep", "access_denied", 400, "too deep"),
        (CLIENT, Code.INVALID_ARGUMENT, "invalid_request:", "invalid_request", 400, "invalid_request"),
        (REGISTRATION, Code.UNAUTHENTICATED, "invalid_token: expired", "invalid_token", 401, "expired"),
        (
            REGISTRATION,
            Code.INVALID_ARGUMENT,
            "invalid_redirect_uri: http only on localhost",
            "invalid_redirect_uri",
            400,
            "http only",
        ),
        (
            CLIENT,
            Code.UNAVAILABLE,
            "temporarily_unavailable: draining",
            "temporarily_unavailable",
            503,
            "draining",
        ),
        # A prefix that is no OAuth error is only a message.
        (
            CLIENT,
            Code.INVALID_ARGUMENT,
            "grant_type: value must be one of",
            "invalid_request",
            400,
            "grant_type: value",
        ),
        (CLIENT, Code.INTERNAL, "database: down", "server_error", 500, "database: down"),
        # Bare statuses: the endpoint's defaults.
        (CLIENT, Code.UNAUTHENTICATED, "nope", "invalid_client", 401, "nope"),
        (CLIENT, Code.PERMISSION_DENIED, "nope", "unauthorized_client", 400, "nope"),
        (CLIENT, Code.NOT_FOUND, "no such refresh token", "invalid_grant", 400, "no such"),
        (REGISTRATION, Code.UNAUTHENTICATED, "nope", "invalid_token", 401, "nope"),
        (REGISTRATION, Code.PERMISSION_DENIED, "nope", "insufficient_scope", 403, "nope"),
        (REGISTRATION, Code.ALREADY_EXISTS, "software_id taken", "invalid_client_metadata", 400, "taken"),
        # A field the validation interceptor refused, by its path.
        (CLIENT, Code.INVALID_ARGUMENT, "scope: value does not match regex", "invalid_scope", 400, "scope"),
        (CLIENT, Code.INVALID_ARGUMENT, "resource: value must be a valid URI", "invalid_target", 400, "URI"),
        (
            CLIENT,
            Code.INVALID_ARGUMENT,
            "audience: value is empty; scope: bad",
            "invalid_target",
            400,
            "audience",
        ),
        (
            REGISTRATION,
            Code.INVALID_ARGUMENT,
            "metadata.redirect_uris: not a URI",
            "invalid_redirect_uri",
            400,
            "URI",
        ),
        (
            REGISTRATION,
            Code.INVALID_ARGUMENT,
            "metadata.client_name: too short",
            "invalid_client_metadata",
            400,
            "too short",
        ),
        (REGISTRATION, Code.INVALID_ARGUMENT, "metadata.scope: bad", "invalid_client_metadata", 400, "bad"),
        # The mesh's failures: retry later, or the server's fault; the edge's gRPC table gives the status.
        (
            CLIENT,
            Code.UNAVAILABLE,
            "upstream connect error or disconnect",
            "temporarily_unavailable",
            503,
            "upstream",
        ),
        (CLIENT, Code.DEADLINE_EXCEEDED, "Deadline Exceeded", "temporarily_unavailable", 504, "Deadline"),
        (REGISTRATION, Code.RESOURCE_EXHAUSTED, "quota", "temporarily_unavailable", 429, "quota"),
        (
            CLIENT,
            Code.UNIMPLEMENTED,
            "/macp.token.v1.TokenService/IssueToken is not implemented yet",
            "server_error",
            501,
            "not implemented",
        ),
        (CLIENT, Code.UNKNOWN, "", "server_error", 500, "unknown"),
    ],
)
def test_oauth_error_of(
    endpoint: Endpoint, code: grpc.StatusCode, details: str, error: str, status: int, description: str
) -> None:
    found = oauth_error_of(failure(code, details), endpoint)
    assert (found.error, found.status.value) == (error, status)
    assert description in found.description


def test_every_default_is_an_error_with_a_status() -> None:
    for defaults in STATUS_DEFAULTS.values():
        assert set(defaults.values()) <= set(OAUTH_STATUS)


def test_oauth_error_takes_its_status_from_the_table() -> None:
    assert OAuthError("invalid_client", "x").status is HTTPStatus.UNAUTHORIZED
    assert OAuthError("invalid_request", "x", HTTPStatus.REQUEST_ENTITY_TOO_LARGE).status.value == 413


def test_the_issuer_defaults_to_the_local_front_listener() -> None:
    redis = {"MACP_REDIS_URL": "redis://127.0.0.1:6379/0"}  # the edge checks revocations
    assert EdgeSettings.from_env(Env(redis)).token_issuer == "http://127.0.0.1:8080"
    settings = EdgeSettings.from_env(Env({**redis, "MACP_TOKEN_ISSUER": "https://auth.macp.example"}))
    assert settings.token_issuer == "https://auth.macp.example"


def test_a_malformed_issuer_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="MACP_TOKEN_ISSUER"):
        EdgeSettings.from_env(Env({"MACP_TOKEN_ISSUER": "auth.macp.example"}))
