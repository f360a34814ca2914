"""The authorization code grant at the token service (CheckAuthorization, Authorize, IssueToken with
a code and its PKCE verifier), and the console's client it keeps registered. The browser's side,
through the edge, is tested in tests/edge/test_sign_in.py."""

from __future__ import annotations

import asyncio
import secrets

import grpc
from macp.token.v1 import token_service_pb2 as pb

from services.runtime.auth.settings import DEFAULT_ISSUER, EDGE_AUDIENCE
from services.stack.config import free_port
from services.token.console import CONSOLE_CLIENT_ID, console_redirect_uri
from services.token.pkce import s256
from services.token.service import DEFINITION
from tests.runtime.serving import running
from tests.token.harness import TokenHarness, rpc_error

PASSWORD = "correct horse battery staple"


def _verifier() -> str:
    return secrets.token_urlsafe(48)


async def _user(token_service: TokenHarness, admin: bool = False) -> str:
    tenant_id = f"t-{secrets.token_hex(4)}"
    username = f"u-{secrets.token_hex(4)}"
    await token_service.tenant(tenant_id)
    await token_service.stub.CreateUser(
        pb.CreateUserRequest(tenant_id=tenant_id, username=username, password=PASSWORD, admin=admin),
        metadata=await token_service.admin_metadata(),
    )
    return username


def _redirect(token_service: TokenHarness) -> str:
    return console_redirect_uri(token_service.environ.get("MACP_TOKEN_ISSUER", DEFAULT_ISSUER))


async def _code(
    token_service: TokenHarness, username: str, verifier: str, scope: str = "", nonce: str = ""
) -> str:
    response: pb.AuthorizeResponse = await token_service.stub.Authorize(
        pb.AuthorizeRequest(
            client_id=CONSOLE_CLIENT_ID,
            redirect_uri=_redirect(token_service),
            scope=scope,
            code_challenge=s256(verifier),
            code_challenge_method="S256",
            username=username,
            password=PASSWORD,
            nonce=nonce,
        )
    )
    assert response.expires_in == 60
    return response.code


def _redeem(
    token_service: TokenHarness, code: str, verifier: str, redirect_uri: str = ""
) -> pb.IssueTokenRequest:
    return pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_AUTHORIZATION_CODE,
        client_id=CONSOLE_CLIENT_ID,
        code=code,
        redirect_uri=redirect_uri or _redirect(token_service),
        code_verifier=verifier,
    )


async def test_the_console_client_signs_in_users_of_any_tenant_for_the_edge(
    token_service: TokenHarness,
) -> None:
    for admin in (False, True):
        username = await _user(token_service, admin=admin)
        verifier = _verifier()
        code = await _code(token_service, username, verifier)
        issued: pb.IssueTokenResponse = await token_service.stub.IssueToken(
            _redeem(token_service, code, verifier)
        )
        claims = await token_service.verified(issued.access_token)
        assert claims["aud"] == EDGE_AUDIENCE
        assert claims["client_id"] == CONSOLE_CLIENT_ID
        assert claims["tenant_id"] != "macp"
        assert claims["tier"] == "pro"
        assert ("audit:read" in issued.scope.split()) is admin
        assert "conversations:write" in issued.scope.split()
        assert issued.refresh_token
        rotated: pb.IssueTokenResponse = await token_service.stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
                client_id=CONSOLE_CLIENT_ID,
                refresh_token=issued.refresh_token,
            )
        )
        assert rotated.refresh_token
        assert rotated.refresh_token != issued.refresh_token


async def test_a_code_redeemed_twice_is_refused_and_revokes_the_first_tokens(
    token_service: TokenHarness,
) -> None:
    username = await _user(token_service)
    verifier = _verifier()
    code = await _code(token_service, username, verifier)
    first: pb.IssueTokenResponse = await token_service.stub.IssueToken(_redeem(token_service, code, verifier))
    assert (await token_service.introspect(first.access_token)).active
    refusal = await rpc_error(token_service.stub.IssueToken(_redeem(token_service, code, verifier)))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.details.startswith("invalid_grant: authorization code already used")
    assert not (await token_service.introspect(first.access_token)).active
    refresh = await rpc_error(
        token_service.stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
                client_id=CONSOLE_CLIENT_ID,
                refresh_token=first.refresh_token,
            )
        )
    )
    assert refresh.details.startswith("invalid_grant")


async def test_a_code_is_bound_to_its_verifier_redirect_uri_and_lifetime(token_service: TokenHarness) -> None:
    username = await _user(token_service)
    verifier = _verifier()
    code = await _code(token_service, username, verifier)
    wrong = await rpc_error(token_service.stub.IssueToken(_redeem(token_service, code, _verifier())))
    assert wrong.details == "invalid_grant: code_verifier does not match the code_challenge"
    other_uri = await rpc_error(
        token_service.stub.IssueToken(_redeem(token_service, code, verifier, _redirect(token_service) + "x"))
    )
    assert other_uri.details.startswith("invalid_grant: redirect_uri differs")
    # Failed redemptions do not use the code up: the rightful one still works.
    await token_service.stub.IssueToken(_redeem(token_service, code, verifier))

    expired = await _code(token_service, username, verifier)
    await token_service.db.execute(
        "UPDATE token_authorization_codes SET expire_time = now() - interval '1 s'"
    )
    late = await rpc_error(token_service.stub.IssueToken(_redeem(token_service, expired, verifier)))
    assert late.details == "invalid_grant: the authorization code expired"


async def test_authorization_requests_are_checked_client_and_redirect_first(
    token_service: TokenHarness,
) -> None:
    async def check(client_id: str, redirect_uri: str, scope: str = "") -> str:
        refusal = await rpc_error(
            token_service.stub.CheckAuthorization(
                pb.CheckAuthorizationRequest(client_id=client_id, redirect_uri=redirect_uri, scope=scope)
            )
        )
        return refusal.details

    good = _redirect(token_service)
    ok: pb.CheckAuthorizationResponse = await token_service.stub.CheckAuthorization(
        pb.CheckAuthorizationRequest(client_id=CONSOLE_CLIENT_ID, redirect_uri=good)
    )
    assert ok.client_name == "MACP console"
    assert (await check("nobody", good)).startswith("invalid_client")
    for near in (good + "/", good[:-1], good.upper(), good + "?x=1", good.replace("127.0.0.1", "localhost")):
        assert (await check(CONSOLE_CLIENT_ID, near)).startswith("invalid_request: redirect_uri"), near
    assert (await check(CONSOLE_CLIENT_ID, good, "macp:admin")).startswith("invalid_scope")
    # An admin-only scope is refused to a user who is not one, once they sign in.
    username = await _user(token_service)
    refusal = await rpc_error(
        token_service.stub.Authorize(
            pb.AuthorizeRequest(
                client_id=CONSOLE_CLIENT_ID,
                redirect_uri=good,
                scope="audit:read",
                code_challenge=s256(_verifier()),
                code_challenge_method="S256",
                username=username,
                password=PASSWORD,
            )
        )
    )
    assert refusal.details.startswith("invalid_scope")
    wrong = await rpc_error(
        token_service.stub.Authorize(
            pb.AuthorizeRequest(
                client_id=CONSOLE_CLIENT_ID,
                redirect_uri=good,
                code_challenge=s256(_verifier()),
                code_challenge_method="S256",
                username=username,
                password="not it",
            )
        )
    )
    assert wrong.details == "invalid_grant: wrong username or password"


async def test_the_console_client_is_ensured_once_by_replicas_starting_together(
    token_service: TokenHarness,
) -> None:
    async def start_and_stop() -> None:
        ports = {"MACP_TOKEN_PORT": str(free_port()), "MACP_TOKEN_METRICS_PORT": "0"}
        async with running(DEFINITION, {**token_service.environ, **ports}):
            pass

    await asyncio.gather(start_and_stop(), start_and_stop())
    rows = await token_service.db.fetch("SELECT * FROM token_clients WHERE client_id = $1", CONSOLE_CLIENT_ID)
    assert len(rows) == 1
    assert rows[0]["secret_hash"] is None
    registered = await token_service.db.fetchval(
        "SELECT count(*) FROM audit_events WHERE resource = $1", f"client/{CONSOLE_CLIENT_ID}"
    )
    assert registered == 1
