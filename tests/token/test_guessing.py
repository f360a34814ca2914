"""Guessing limits: failed passwords lock the account, failed client secrets the client, for a
while that doubles; the rightful owner gets in once it is over; every lockout and refusal audited."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from tests.audit.helpers import rows
from tests.token.harness import USER_PASSWORD, RegisteredClient, TokenHarness, password_grant, rpc_error

pytestmark = pytest.mark.integration

PASSWORD = USER_PASSWORD
# Long enough that the 25 refused attempts of a test, one after the other, all fall inside the
# lockout even on a loaded machine (at 0.5 s a slow moment let the lockout end mid-loop).
LOCKOUT_SECONDS = 2.0


@pytest.fixture
def token_environ(token_environ: dict[str, str]) -> dict[str, str]:
    # Short lockouts, so that waiting one out fits in a test.
    return {
        **token_environ,
        "MACP_TOKEN_FREE_FAILURES": "5",
        "MACP_TOKEN_LOCKOUT_SECONDS": str(LOCKOUT_SECONDS),
        "MACP_TOKEN_MAX_LOCKOUT_SECONDS": str(2 * LOCKOUT_SECONDS),
    }


async def _app(token_service: TokenHarness) -> tuple[RegisteredClient, pb.User]:
    await token_service.tenant("acme")
    user = await token_service.user("acme", "ada", PASSWORD)
    app = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER, tenant_id="acme", grant_types=["password"]
    )
    return app, user


def _sign_in(token_service: TokenHarness, app: RegisteredClient, password: str) -> Any:
    return token_service.stub.IssueToken(password_grant(app.client_id, app.client_secret, password=password))


async def test_wrong_passwords_lock_the_account_until_the_lockout_ends(token_service: TokenHarness) -> None:
    app, user = await _app(token_service)
    codes = [(await rpc_error(_sign_in(token_service, app, f"guess {n}"))).code for n in range(30)]
    # Five guesses are checked; then the account is locked and the rest are refused unchecked.
    assert codes[:5] == [grpc.StatusCode.INVALID_ARGUMENT] * 5
    assert set(codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}

    # Even the right password waits for the lockout: a guess that happens to be right tells nothing.
    refused = await rpc_error(_sign_in(token_service, app, PASSWORD))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.details.startswith("invalid_grant: too many failed sign-ins")
    assert f"retry after {LOCKOUT_SECONDS:.0f} s" in refused.details

    # The rightful owner gets in once it is over, which clears the count.
    await asyncio.sleep(LOCKOUT_SECONDS + 0.1)
    assert (await _sign_in(token_service, app, PASSWORD)).access_token
    typo = await rpc_error(_sign_in(token_service, app, "one typo"))
    assert typo.code == grpc.StatusCode.INVALID_ARGUMENT

    found = await rows(token_service.db, "acme")
    lockouts = [row for row in found if row.action == audit.AUTH_LOCKOUT]
    refusals = [row for row in found if row.action == audit.AUTH_REFUSE]
    assert len(lockouts) == 1
    assert lockouts[0].detail == {
        "credential": "password",
        "failures": "5",
        "lockout_seconds": f"{LOCKOUT_SECONDS:.0f}",
    }
    assert len(refusals) == 26  # the 25 guesses and the right password, while locked
    assert {(row.outcome, row.client_id) for row in [*lockouts, *refusals]} == {(audit.DENIED, app.client_id)}
    assert {row.resource for row in [*lockouts, *refusals]} == {f"user/{user.user_id}"}


async def test_a_burst_of_concurrent_guesses_is_counted_before_it_is_checked(
    token_service: TokenHarness,
) -> None:
    app, _ = await _app(token_service)
    results = await asyncio.gather(
        *(rpc_error(_sign_in(token_service, app, f"guess {n}")) for n in range(30))
    )
    checked = [r for r in results if r.code == grpc.StatusCode.INVALID_ARGUMENT]
    assert len(checked) == 5


async def test_an_unknown_username_is_limited_like_a_real_one(token_service: TokenHarness) -> None:
    app, _ = await _app(token_service)
    request = password_grant(app.client_id, app.client_secret, username="nobody", password="guess")
    codes = [(await rpc_error(token_service.stub.IssueToken(request))).code for _ in range(7)]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


async def test_wrong_client_secrets_lock_the_client(token_service: TokenHarness) -> None:
    client = await token_service.register(scope="conversations:read")
    wrong = RegisteredClient(client.client_id, "not-the-secret")
    codes = [(await rpc_error(token_service.client_token(wrong))).code for _ in range(30)]
    assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
    assert set(codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    refused = await rpc_error(token_service.client_token(client))
    assert refused.details.startswith("invalid_client: too many failed authentications")

    await asyncio.sleep(LOCKOUT_SECONDS + 0.1)
    assert (await token_service.client_token(client)).access_token
    found = await rows(token_service.db, "macp")
    assert len([row for row in found if row.action == audit.AUTH_LOCKOUT]) == 1
    assert len([row for row in found if row.action == audit.AUTH_REFUSE]) == 26
    assert {row.resource for row in found if row.action.startswith("auth.")} == {f"client/{client.client_id}"}
