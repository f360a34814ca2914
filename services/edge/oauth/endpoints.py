"""The OAuth 2.0 authorization server's HTTP face: /oauth2/* and /.well-known/* → TokenService.

Each endpoint speaks its RFC exactly (form bodies in, RFC-named JSON out, RFC 6749 section 5.2 errors),
so standard OAuth client libraries work unchanged; the token service decides everything else.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from macp.token.v1 import token_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.edge.context import EdgeContext, edge_context
from services.edge.http import read_body
from services.edge.json_input import InvalidJson, decode_json_object
from services.edge.oauth import sign_in
from services.edge.oauth.documents import (
    CLIENT_INFORMATION,
    CLIENT_METADATA,
    INTROSPECT_FORM,
    INTROSPECTION,
    INTROSPECTION_EXCLUDES,
    JWKS,
    OPENID_CONFIGURATION,
    REVOKE_FORM,
    SERVER_METADATA,
    SIGN_IN_ERROR_PAGE,
    SIGN_IN_FORM,
    SIGN_IN_PAGE,
    TOKEN_EXCHANGE,
    TOKEN_FORM,
    TOKEN_RESPONSE,
    TOKEN_RESPONSE_EXCLUDES,
    USERINFO,
    openid_configuration,
    rfc_fields,
    server_metadata,
)
from services.edge.oauth.errors import (
    NO_STORE,
    OAUTH_ERROR,
    Endpoint,
    OAuthError,
    oauth_endpoint,
    oauth_error_of,
)
from services.edge.oauth.forms import Form, bearer_token, client_credentials, media_type, read_form
from services.edge.routes import ApiRoute, Content, Handler
from services.edge.schema import JsonSchema
from services.runtime.auth.authenticator import principal_from_claims
from services.runtime.auth.basic import encode_basic
from services.runtime.auth.jwt import InvalidToken
from services.runtime.context import reset_quietly
from services.runtime.principal import Caller, caller_var

# Verifiers cache the key set; short, so a rotated-in key is seen soon (they also refetch on an unknown kid).
JWKS_MAX_AGE_SECONDS = 60
METADATA_MAX_AGE_SECONDS = 300

_GRANTS = {
    "authorization_code": pb.GRANT_TYPE_AUTHORIZATION_CODE,
    "client_credentials": pb.GRANT_TYPE_CLIENT_CREDENTIALS,
    "password": pb.GRANT_TYPE_PASSWORD,
    "refresh_token": pb.GRANT_TYPE_REFRESH_TOKEN,
}

# The parameters RFC 6749 section 4 requires of each grant (the client is authenticated apart).
_REQUIRED = {
    "password": ("username", "password"),
    "refresh_token": ("refresh_token",),
    "authorization_code": ("code", "redirect_uri", "code_verifier"),
}

_TOKEN_TYPE_HINTS = frozenset({"access_token", "refresh_token"})

_TEXT: JsonSchema = {"type": "string"}
# The authorization request's query (RFC 6749 4.1.1, RFC 7636 4.3, RFC 8707 2).
_AUTHORIZE_QUERY: tuple[tuple[str, JsonSchema, str], ...] = (
    ("response_type", {"const": "code"}, "code: the only response type"),
    ("client_id", _TEXT, "the client asking"),
    ("redirect_uri", _TEXT, "exactly one of the client's registered redirect URIs"),
    ("state", _TEXT, "required; sent back unchanged"),
    ("code_challenge", _TEXT, "BASE64URL(SHA-256(code_verifier)), 43 characters"),
    ("code_challenge_method", {"const": "S256"}, "S256 only"),
    ("scope", _TEXT, "space-delimited; empty for all the user may have"),
    ("resource", _TEXT, "RFC 8707; empty for the edge"),
    ("nonce", _TEXT, "OpenID Connect: put unchanged in the ID token; at most 512 characters"),
)


def _token_response(reply: pb.IssueTokenResponse | pb.ExchangeTokenResponse) -> JSONResponse:
    return JSONResponse(rfc_fields(reply, TOKEN_RESPONSE_EXCLUDES), headers=NO_STORE)


def _hint(form: Form) -> str:
    """RFC 7009 section 2.1: an unknown hint is ignored, not refused (the service searches every kind)."""
    hint = form.get("token_type_hint")
    return hint if hint in _TOKEN_TYPE_HINTS else ""


async def _issue(edge: EdgeContext, request: Request, form: Form, grant_type: str) -> Response:
    for name in _REQUIRED.get(grant_type, ()):
        form.require(name)
    client = client_credentials(request, form)
    if grant_type == "client_credentials" and client.method == "none":
        raise OAuthError("invalid_client", "the client_credentials grant needs the client's secret")
    reply: pb.IssueTokenResponse = await edge.token.IssueToken(
        pb.IssueTokenRequest(
            grant_type=_GRANTS[grant_type],
            client_id=client.client_id,
            client_secret=client.client_secret,
            username=form.get("username"),
            password=form.get("password"),
            refresh_token=form.get("refresh_token"),
            scope=form.get("scope"),
            resource=form.all("resource"),
            audience=form.all("audience"),
            code=form.get("code"),
            redirect_uri=form.get("redirect_uri"),
            code_verifier=form.get("code_verifier"),
        ),
        timeout=edge.timeout,
    )
    return _token_response(reply)


async def _exchange(edge: EdgeContext, request: Request, form: Form) -> Response:
    subject_token = form.require("subject_token")
    subject_token_type = form.require("subject_token_type")
    client = client_credentials(request, form)
    reply: pb.ExchangeTokenResponse = await edge.token.ExchangeToken(
        pb.ExchangeTokenRequest(
            client_id=client.client_id,
            client_secret=client.client_secret,
            subject_token=subject_token,
            subject_token_type=subject_token_type,
            actor_token=form.get("actor_token"),
            actor_token_type=form.get("actor_token_type"),
            resource=form.all("resource"),
            audience=form.all("audience"),
            scope=form.get("scope"),
            requested_token_type=form.get("requested_token_type"),
        ),
        timeout=edge.timeout,
    )
    return _token_response(reply)


@oauth_endpoint(Endpoint.CLIENT)
async def token(request: Request) -> Response:
    edge = edge_context(request)
    form = await read_form(request, edge.settings.max_body_bytes)
    grant_type = form.require("grant_type")
    if grant_type == TOKEN_EXCHANGE:
        return await _exchange(edge, request, form)
    if grant_type not in _GRANTS:
        raise OAuthError("unsupported_grant_type", f"{grant_type} is not a grant this server supports")
    return await _issue(edge, request, form, grant_type)


@oauth_endpoint(Endpoint.CLIENT)
async def revoke(request: Request) -> Response:
    edge = edge_context(request)
    form = await read_form(request, edge.settings.max_body_bytes)
    token_id = form.get("token_id")  # MACP extension: an access token named by its `jti`
    revoked = form.get("token") if token_id else form.require("token")
    client = client_credentials(request, form)
    await edge.token.Revoke(
        pb.RevokeRequest(
            token=revoked,
            token_type_hint=_hint(form),
            client_id=client.client_id,
            client_secret=client.client_secret,
            token_id=token_id,
        ),
        timeout=edge.timeout,
    )
    return Response(status_code=200, headers=NO_STORE)


@oauth_endpoint(Endpoint.CLIENT)
async def introspect(request: Request) -> Response:
    edge = edge_context(request)
    form = await read_form(request, edge.settings.max_body_bytes)
    introspected = form.require("token")
    client = client_credentials(request, form)
    if client.method == "none":
        raise OAuthError("invalid_client", "introspection needs the client's secret")
    try:
        # The token service authenticates the caller itself (RFC 7662 section 2.1): its credentials
        # travel as the call's one `authorization` entry, the request having no field for them.
        reply: pb.IntrospectResponse = await edge.token.Introspect(
            pb.IntrospectRequest(token=introspected, token_type_hint=_hint(form)),
            timeout=edge.timeout,
            metadata=(("authorization", encode_basic(client.client_id, client.client_secret)),),
        )
    except grpc.aio.AioRpcError as exc:
        error = oauth_error_of(exc, Endpoint.CLIENT)
        if error.error in ("invalid_client", "temporarily_unavailable", "server_error"):
            raise error from None
        reply = pb.IntrospectResponse(active=False)  # RFC 7662 section 2.2: whatever is wrong with it
    document: dict[str, Any] = {"active": False}
    if reply.active:
        document = rfc_fields(reply, INTROSPECTION_EXCLUDES)
    return JSONResponse(document, headers=NO_STORE)


async def _client_metadata(request: Request, max_bytes: int) -> tuple[pb.ClientMetadata, str]:
    """The RFC 7591 metadata of a registration body, and its MACP `tenant_id` member."""
    if media_type(request) != "application/json":
        raise OAuthError("invalid_client_metadata", "send the client metadata as application/json")
    body = await read_body(request, max_bytes)
    try:
        document = decode_json_object(body, what="the body")
    except InvalidJson as exc:
        raise OAuthError("invalid_client_metadata", exc.message) from None
    tenant_id = document.pop("tenant_id", None) or ""
    if not isinstance(tenant_id, str):
        raise OAuthError("invalid_client_metadata", "tenant_id must be a string")
    metadata = pb.ClientMetadata()
    try:
        # RFC 7591 section 2: metadata the server does not understand is ignored.
        json_format.ParseDict(document, metadata, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OAuthError("invalid_client_metadata", str(exc)) from None
    return metadata, tenant_id


@oauth_endpoint(Endpoint.REGISTRATION)
async def register(request: Request) -> Response:
    edge = edge_context(request)
    initial_access_token = bearer_token(request)
    metadata, tenant_id = await _client_metadata(request, edge.settings.max_body_bytes)
    reply: pb.RegisterClientResponse = await edge.token.RegisterClient(
        pb.RegisterClientRequest(
            metadata=metadata, initial_access_token=initial_access_token, tenant_id=tenant_id
        ),
        timeout=edge.timeout,
    )
    document: dict[str, Any] = {"client_id": reply.client_id}
    if reply.client_id_issued_at:
        document["client_id_issued_at"] = reply.client_id_issued_at
    if reply.client_secret:
        document["client_secret"] = reply.client_secret
        document["client_secret_expires_at"] = reply.client_secret_expires_at
    document.update(rfc_fields(reply.metadata))
    return JSONResponse(document, status_code=201, headers=NO_STORE)


async def userinfo(request: Request) -> Response:
    """OpenID Connect UserInfo: the Bearer token (an edge token of a user) is verified here, as the
    route is under /oauth2/ (no authentication in front of it), and the token service is asked as
    that caller."""
    edge = edge_context(request)
    token = bearer_token(request)
    if not token:
        raise OAuthError("invalid_token", "send the user's access token as `Authorization: Bearer`")
    try:
        claims = await edge.verifier.verify(token)
    except InvalidToken as exc:
        raise OAuthError("invalid_token", f"invalid token: {exc.reason}") from None
    reset = caller_var.set(Caller(token, principal_from_claims(claims)))
    try:
        reply: pb.GetUserInfoResponse = await edge.token.GetUserInfo(
            pb.GetUserInfoRequest(), timeout=edge.timeout
        )
    finally:
        reset_quietly(caller_var, reset)
    return JSONResponse(
        {
            "sub": reply.sub,
            "preferred_username": reply.preferred_username,
            "tenant_id": reply.tenant_id,
            "tier": reply.tier,
            "admin": reply.admin,
        },
        headers=NO_STORE,
    )


async def jwks(request: Request) -> Response:
    edge = edge_context(request)
    reply: pb.GetJwksResponse = await edge.token.GetJwks(pb.GetJwksRequest(), timeout=edge.timeout)
    return JSONResponse(
        {"keys": [rfc_fields(key) for key in reply.keys]},
        headers={"cache-control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"},
    )


async def authorization_server(request: Request) -> Response:
    edge = edge_context(request)
    return JSONResponse(
        server_metadata(edge.settings.token_issuer),
        headers={"cache-control": f"public, max-age={METADATA_MAX_AGE_SECONDS}"},
    )


async def openid_provider(request: Request) -> Response:
    edge = edge_context(request)
    return JSONResponse(
        openid_configuration(edge.settings.token_issuer),
        headers={"cache-control": f"public, max-age={METADATA_MAX_AGE_SECONDS}"},
    )


# What every OAuth endpoint that takes a client's request answers besides its success: RFC 6749
# section 5.2 errors (OAUTH_ERROR), 413 for a body over the limit, 429 when rate limited.
_CLIENT_ERRORS = (400, 401, 413, 429, 503)


def _client_route(
    path: str,
    operation_id: str,
    summary: str,
    handler: Handler,
    body: Content,
    response: Content | None,
    **overrides: Any,
) -> ApiRoute:
    """A POST endpoint a client calls (token, revoke, introspect, register)."""
    options: dict[str, Any] = {"errors": _CLIENT_ERRORS, **overrides}
    return ApiRoute(
        method="POST",
        path=path,
        operation_id=operation_id,
        summary=summary,
        handler=handler,
        body=body,
        response=response,
        error=OAUTH_ERROR,
        tags=("oauth",),
        **options,
    )


ROUTES = [
    _client_route(
        "/oauth2/token",
        "oauthToken",
        "Issue an access token: client credentials, password, refresh token or token exchange",
        token,
        TOKEN_FORM,
        TOKEN_RESPONSE,
    ),
    _client_route(
        "/oauth2/revoke",
        "oauthRevoke",
        "Revoke a token (RFC 7009); unknown tokens succeed too",
        revoke,
        REVOKE_FORM,
        None,
    ),
    _client_route(
        "/oauth2/introspect",
        "oauthIntrospect",
        "Whether a token is active, and whose it is (RFC 7662)",
        introspect,
        INTROSPECT_FORM,
        INTROSPECTION,
    ),
    ApiRoute(
        method="GET",
        path="/oauth2/authorize",
        operation_id="oauthAuthorize",
        summary="The authorization endpoint (RFC 6749 3.1, 4.1): the sign-in page of a code request "
        "with PKCE (S256); an error after the redirect URI is verified goes back to it (303)",
        handler=sign_in.authorize_page,
        response=SIGN_IN_PAGE,
        extra_statuses=(303,),
        query=_AUTHORIZE_QUERY,
        errors=(400, 503),
        error=SIGN_IN_ERROR_PAGE,
        tags=("oauth",),
    ),
    ApiRoute(
        method="POST",
        path="/oauth2/authorize",
        operation_id="oauthAuthorizeSignIn",
        summary="Sign in on the sign-in page: 303 to the client's redirect URI with the code, state and "
        "iss; the page again on wrong credentials (400) or a locked account (429)",
        handler=sign_in.sign_in,
        body=SIGN_IN_FORM,
        response=SIGN_IN_PAGE,
        status=303,
        errors=(400, 403, 413, 429, 503),
        error=SIGN_IN_ERROR_PAGE,
        tags=("oauth",),
    ),
    ApiRoute(
        method="GET",
        path="/oauth2/userinfo",
        operation_id="oauthUserInfo",
        summary="Who the Bearer token's user is (OpenID Connect UserInfo): sub, preferred_username, "
        "tenant_id, tier and admin",
        handler=oauth_endpoint(Endpoint.REGISTRATION)(userinfo),
        response=USERINFO,
        errors=(401, 503),
        error=OAUTH_ERROR,
        tags=("oauth",),
    ),
    _client_route(
        "/oauth2/register",
        "oauthRegister",
        "Register a client (RFC 7591): with an initial access token, or without one a third-party "
        "MCP client of a tenant that takes open registrations",
        register,
        CLIENT_METADATA,
        CLIENT_INFORMATION,
        status=201,
        errors=(400, 401, 403, 413, 503),
    ),
    ApiRoute(
        method="GET",
        path="/.well-known/jwks.json",
        operation_id="jwks",
        summary="The public keys access tokens are signed with (RFC 7517)",
        handler=jwks,
        response=JWKS,
        errors=(503,),
        tags=("oauth",),
    ),
    ApiRoute(
        method="GET",
        path="/.well-known/oauth-authorization-server",
        operation_id="oauthAuthorizationServer",
        summary="The authorization server's metadata (RFC 8414)",
        handler=authorization_server,
        response=SERVER_METADATA,
        errors=(),
        tags=("oauth",),
    ),
    ApiRoute(
        method="GET",
        path="/.well-known/openid-configuration",
        operation_id="openIdConfiguration",
        summary="The OpenID Provider's metadata (OpenID Connect Discovery 1.0): the authorization "
        "server's, with ID token signing, subject types and claims",
        handler=openid_provider,
        response=OPENID_CONFIGURATION,
        errors=(),
        tags=("oauth",),
    ),
]
