"""OpenID Connect ID tokens at the token service: a code whose scope has `openid` is redeemed for an
ID token beside the access token, signed with the same key, typed `JWT`, for the client; every
claim is checked against what the sign-in was. Only the authorization code grant takes `openid`,
and no verifier of the token service takes an ID token for an access token. The browser's side,
through the edge, is tests/edge/test_openid.py."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import grpc
import jwt as pyjwt
from macp.token.v1 import token_service_pb2 as pb

from services.runtime.auth.settings import DEFAULT_ISSUER
from services.token.console import CONSOLE_CLIENT_ID
from tests.token.harness import TokenHarness, password_grant, rpc_error, unverified
from tests.token.test_authorization_code import PASSWORD, _code, _redeem, _redirect, _user


def _issuer(token_service: TokenHarness) -> str:
    return token_service.environ.get("MACP_TOKEN_ISSUER", DEFAULT_ISSUER)


async def _signed_in(
    token_service: TokenHarness, scope: str, nonce: str = "", username: str = ""
) -> pb.IssueTokenResponse:
    username = username or await _user(token_service)
    verifier = secrets.token_urlsafe(48)
    code = await _code(token_service, username, verifier, scope, nonce)
    issued: pb.IssueTokenResponse = await token_service.stub.IssueToken(
        _redeem(token_service, code, verifier)
    )
    return issued


def _expected_at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


async def _verified_id_token(token_service: TokenHarness, id_token: str) -> dict[str, Any]:
    """The ID token's claims, verified by PyJWT against the published key set (signature, iss,
    aud, exp, iat), every claim OpenID Connect requires present."""
    key_set = pyjwt.PyJWKSet.from_json(
        json.dumps(
            {
                "keys": [
                    {"kty": k.kty, "kid": k.kid, "use": k.use, "alg": k.alg, "n": k.n, "e": k.e}
                    for k in await token_service.jwks()
                ]
            }
        )
    )
    kid = pyjwt.get_unverified_header(id_token)["kid"]
    claims: dict[str, Any] = pyjwt.decode(
        id_token,
        key_set[kid],
        algorithms=["RS256"],
        audience=CONSOLE_CLIENT_ID,
        issuer=_issuer(token_service),
        options={"require": ["iss", "sub", "aud", "exp", "iat", "auth_time", "azp", "at_hash"]},
    )
    return claims


async def test_an_openid_code_gets_an_id_token_signed_like_the_access_tokens(
    token_service: TokenHarness,
) -> None:
    username = await _user(token_service)
    nonce = "n-" + secrets.token_urlsafe(24)
    before = int(time.time())
    issued = await _signed_in(token_service, "openid conversations:read", nonce, username)
    assert issued.id_token
    assert issued.scope.split() == ["openid", "conversations:read"]

    header, _ = unverified(issued.id_token)
    access_header, access = unverified(issued.access_token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": access_header["kid"]}
    assert access_header["typ"] == "at+jwt"

    claims = await _verified_id_token(token_service, issued.id_token)
    user = await token_service.db.fetchrow("SELECT * FROM token_users WHERE username = $1", username)
    assert claims == {
        "iss": _issuer(token_service),
        "sub": access["sub"],
        "aud": CONSOLE_CLIENT_ID,
        "exp": access["exp"],
        "iat": claims["iat"],
        "auth_time": claims["auth_time"],
        "nonce": nonce,
        "azp": CONSOLE_CLIENT_ID,
        "at_hash": _expected_at_hash(issued.access_token),
        "preferred_username": username,
        "tenant_id": user["tenant_id"],
    }
    assert claims["sub"] == user["user_id"] == access["user_id"]
    assert before <= claims["auth_time"] <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] <= 3600


async def test_the_nonce_is_optional_and_bounded(token_service: TokenHarness) -> None:
    issued = await _signed_in(token_service, "openid")
    claims = await _verified_id_token(token_service, issued.id_token)
    assert "nonce" not in claims
    # `openid` alone asks for an ID token and, as an empty scope does, every user scope.
    assert issued.scope.split()[0] == "openid"
    assert "conversations:write" in issued.scope.split()

    username = await _user(token_service)
    refusal = await rpc_error(_code(token_service, username, secrets.token_urlsafe(48), "openid", "n" * 513))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nonce" in refusal.details
    longest = await _signed_in(token_service, "openid", "n" * 512)
    assert (await _verified_id_token(token_service, longest.id_token))["nonce"] == "n" * 512


async def test_no_openid_no_id_token(token_service: TokenHarness) -> None:
    for scope in ("", "conversations:read"):
        issued = await _signed_in(token_service, scope, nonce="ignored")
        assert issued.id_token == ""
        assert "openid" not in issued.scope.split()


async def test_openid_is_checked_like_any_scope_before_the_sign_in(token_service: TokenHarness) -> None:
    ok: pb.CheckAuthorizationResponse = await token_service.stub.CheckAuthorization(
        pb.CheckAuthorizationRequest(
            client_id=CONSOLE_CLIENT_ID, redirect_uri=_redirect(token_service), scope="openid tools:read"
        )
    )
    assert ok.client_name == "MACP console"
    refusal = await rpc_error(
        token_service.stub.CheckAuthorization(
            pb.CheckAuthorizationRequest(
                client_id=CONSOLE_CLIENT_ID, redirect_uri=_redirect(token_service), scope="openid macp:admin"
            )
        )
    )
    assert refusal.details == "invalid_scope: not grantable here: macp:admin"


async def test_a_refresh_keeps_openid_but_returns_no_new_id_token(token_service: TokenHarness) -> None:
    issued = await _signed_in(token_service, "openid conversations:read", "n")
    refreshed: pb.IssueTokenResponse = await token_service.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
            client_id=CONSOLE_CLIENT_ID,
            refresh_token=issued.refresh_token,
        )
    )
    assert refreshed.access_token
    assert refreshed.id_token == ""
    assert refreshed.scope.split() == ["openid", "conversations:read"]


async def test_only_the_authorization_code_grant_takes_openid(token_service: TokenHarness) -> None:
    username = await _user(token_service)
    public = await token_service.register(
        grant_types=["password"], scope="conversations:read", auth_method="none"
    )
    signed_in: pb.IssueTokenResponse = await token_service.stub.IssueToken(
        password_grant(public.client_id, username=username, password=PASSWORD, scope="conversations:read")
    )
    assert signed_in.id_token == ""
    refusal = await rpc_error(
        token_service.stub.IssueToken(
            password_grant(public.client_id, username=username, password=PASSWORD, scope="openid")
        )
    )
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.details.startswith("invalid_scope: openid is only for the authorization_code grant")
    assert "the password grant issues no ID token" in refusal.details

    service = await token_service.register(scope="tools:read")
    assert (await token_service.client_token(service, "tools:read")).id_token == ""
    refusal = await rpc_error(token_service.client_token(service, "openid tools:read"))
    assert refusal.details.startswith("invalid_scope: openid is only for the authorization_code grant")
    assert "the client_credentials grant issues no ID token" in refusal.details


async def test_an_id_token_is_never_taken_for_an_access_token(token_service: TokenHarness) -> None:
    issued = await _signed_in(token_service, "openid", "n")
    # The access token beside it passes each of these, so what refuses the ID token is its kind.
    assert (await token_service.introspect(issued.access_token)).active
    assert not (await token_service.introspect(issued.id_token)).active
    # GetUserInfo wants a token for the token service: the ID token is not one on two counts.
    userinfo = await rpc_error(
        token_service.stub.GetUserInfo(
            pb.GetUserInfoRequest(), metadata=(("authorization", f"Bearer {issued.id_token}"),)
        )
    )
    assert userinfo.code == grpc.StatusCode.UNAUTHENTICATED
    exchanger = await token_service.register(grant_types=["urn:ietf:params:oauth:grant-type:token-exchange"])
    for token_type in ("urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:jwt"):
        exchanged = await rpc_error(
            token_service.stub.ExchangeToken(
                pb.ExchangeTokenRequest(
                    client_id=exchanger.client_id,
                    client_secret=exchanger.client_secret,
                    subject_token=issued.id_token,
                    subject_token_type=token_type,
                )
            )
        )
        assert exchanged.details.startswith("invalid_request: subject_token is not a valid"), exchanged
