"""Browser sign-in, at the HTTP level, as a browser does it: through Envoy's front listener to the
edge's sign-in page, the real token service, Postgres and Redis, and the whole mesh behind (the
token a sign-in gets is used on `/v1/agents`). One test per attack the issue names, and the
happy path with refresh rotation, userinfo and sign-out.

The module's stack keeps the per-account guessing policy's defaults (5 free failures, then a lock
of 1 s doubling per failure) but caps a lock at MAX_LOCKOUT_SECONDS, so the owner's sign-in after
30 wrong passwords waits seconds, not the production cap of 5 minutes; the per-address limits are
lifted (every request comes from 127.0.0.1, many failing on purpose): the per-address counting of
a failed sign-in is tested apart (test_a_failed_sign_in_counts_against_its_address).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import secrets
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from services.edge.source_limits import failed_authentication
from services.runtime.auth.settings import DEFAULT_ISSUER
from tests.tokens import PASSWORD, Tenant
from tests.world import World

pytestmark = pytest.mark.integration

CONSOLE = "macp-console"
ISSUER = DEFAULT_ISSUER  # what tests/tokens.py's token_environ gives the token service and the edge
REDIRECT = f"{ISSUER}/console/callback"
MAX_LOCKOUT_SECONDS = 4
STACK = {
    "MACP_TOKEN_MAX_LOCKOUT_SECONDS": str(MAX_LOCKOUT_SECONDS),
    "MACP_RATE_LIMIT_SOURCE": "100000/min",
    "MACP_RATE_LIMIT_SOURCE_FAILURES": "100000/min",
    "MACP_RATE_LIMIT_SOURCE_IN_FLIGHT": "1000",
}
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


@pytest.fixture(scope="module")
async def world(
    module_environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    from tests.world import running_world

    async with running_world({**module_environ, **STACK}, tmp_path_factory.mktemp("sign-in")) as running:
        yield running


@pytest.fixture
async def browser(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """A browser of its own (its own cookies), never following a redirect by itself."""
    async with httpx.AsyncClient(base_url=world.front_url, timeout=20, follow_redirects=False) as client:
        yield client


@pytest.fixture
async def tenant(world: World) -> Tenant:
    """A tenant of its own, with a user whose password is tests/tokens.py's PASSWORD."""
    return await world.tokens.tenant()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def request_params(challenge: str, **overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": CONSOLE,
        "redirect_uri": REDIRECT,
        "state": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **overrides,
    }
    return {name: value for name, value in params.items() if value is not None}


def hidden_fields(page: httpx.Response) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page.text)}


def answer(response: httpx.Response) -> dict[str, str]:
    """The query of a redirect back to the console, which must be where it goes."""
    location = response.headers["location"]
    assert location.startswith(f"{REDIRECT}?"), location
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


async def page(browser: httpx.AsyncClient, params: dict[str, str]) -> httpx.Response:
    return await browser.get("/oauth2/authorize", params=params)


async def post(
    browser: httpx.AsyncClient, fields: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    return await browser.post(
        "/oauth2/authorize",
        data=fields,
        headers={"origin": ISSUER, "sec-fetch-site": "same-origin", **(headers or {})},
    )


async def sign_in(
    browser: httpx.AsyncClient, username: str, password: str = PASSWORD, **overrides: str | None
) -> tuple[httpx.Response, str, dict[str, str]]:
    """The page, then its form posted with the credentials: the answer, the verifier, the request."""
    verifier, challenge = pkce()
    params = request_params(challenge, **overrides)
    shown = await page(browser, params)
    assert shown.status_code == 200, shown.text
    posted = await post(browser, {**hidden_fields(shown), "username": username, "password": password})
    return posted, verifier, params


async def code_for(browser: httpx.AsyncClient, tenant: Tenant) -> tuple[str, str]:
    posted, verifier, params = await sign_in(browser, tenant.username)
    assert posted.status_code == 303, posted.text
    query = answer(posted)
    assert query["state"] == params["state"]
    return query["code"], verifier


async def redeem(
    browser: httpx.AsyncClient, code: str, verifier: str, redirect_uri: str = REDIRECT
) -> httpx.Response:
    return await browser.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "client_id": CONSOLE,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
    )


async def agents(browser: httpx.AsyncClient, access_token: str) -> int:
    response = await browser.get("/v1/agents", headers={"authorization": f"Bearer {access_token}"})
    return response.status_code


async def refused_within(browser: httpx.AsyncClient, access_token: str, seconds: float) -> float:
    """How long until the edge refuses `access_token` (401); fails after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if await agents(browser, access_token) == 401:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"the token was still accepted {seconds} s after its revocation")


def assert_page_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["content-type"].startswith("text/html")
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "same-origin"


async def test_the_metadata_offers_the_code_flow_with_pkce(browser: httpx.AsyncClient) -> None:
    metadata = (await browser.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["authorization_endpoint"] == f"{ISSUER}/oauth2/authorize"
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert "authorization_code" in metadata["grant_types_supported"]
    assert metadata["userinfo_endpoint"] == f"{ISSUER}/oauth2/userinfo"
    document = (await browser.get("/v1/openapi.json")).json()
    assert set(document["paths"]["/oauth2/authorize"]) == {"get", "post"}
    assert "get" in document["paths"]["/oauth2/userinfo"]


async def test_a_browser_signs_in_uses_refreshes_and_signs_out(
    browser: httpx.AsyncClient, tenant: Tenant
) -> None:
    verifier, challenge = pkce()
    params = request_params(challenge)
    shown = await page(browser, params)
    assert shown.status_code == 200
    assert_page_headers(shown)
    text = shown.text
    assert '<html lang="en">' in text
    assert "<title>Sign in to MACP</title>" in text
    assert '<label for="username">' in text
    assert '<label for="password">' in text
    assert '<button type="submit">' in text
    assert "<script" not in text
    assert "MACP console" in text
    cookie = shown.headers["set-cookie"]
    assert cookie.startswith("macp_csrf=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/oauth2/authorize" in cookie
    fields = hidden_fields(shown)
    assert fields["csrf_token"] == browser.cookies["macp_csrf"]

    posted = await post(browser, {**fields, "username": tenant.username, "password": PASSWORD})
    assert posted.status_code == 303, posted.text
    assert posted.headers["referrer-policy"] == "same-origin"
    query = answer(posted)
    assert query["state"] == params["state"]
    assert query["iss"] == ISSUER
    assert set(query) == {"code", "state", "iss"}

    tokens = await redeem(browser, query["code"], verifier)
    assert tokens.status_code == 200, tokens.text
    issued = tokens.json()
    assert issued["token_type"] == "Bearer"
    assert "conversations:read" in issued["scope"].split()
    assert await agents(browser, issued["access_token"]) == 200

    info = await browser.get(
        "/oauth2/userinfo", headers={"authorization": f"Bearer {issued['access_token']}"}
    )
    assert info.status_code == 200, info.text
    assert info.json() == {
        "sub": info.json()["sub"],
        "preferred_username": tenant.username,
        "tenant_id": tenant.tenant_id,
        "tier": "free",
        "admin": False,
    }

    refreshed = await browser.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "client_id": CONSOLE, "refresh_token": issued["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text
    rotated = refreshed.json()
    assert rotated["refresh_token"] != issued["refresh_token"]
    assert await agents(browser, rotated["access_token"]) == 200

    # Sign-out: the session's refresh token revoked (a public client sends only its id) revokes
    # its family and every access token issued from it.
    signed_out = await browser.post(
        "/oauth2/revoke", data={"token": rotated["refresh_token"], "client_id": CONSOLE}
    )
    assert signed_out.status_code == 200, signed_out.text
    assert await refused_within(browser, rotated["access_token"], 1.5) <= 1.5
    assert await agents(browser, issued["access_token"]) == 401
    again = await browser.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "client_id": CONSOLE, "refresh_token": rotated["refresh_token"]},
    )
    assert again.status_code == 400


async def test_a_code_used_twice_is_refused_and_revokes_the_first_tokens(
    browser: httpx.AsyncClient, tenant: Tenant
) -> None:
    code, verifier = await code_for(browser, tenant)
    first = await redeem(browser, code, verifier)
    assert first.status_code == 200
    access = first.json()["access_token"]
    assert await agents(browser, access) == 200
    second = await redeem(browser, code, verifier)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    assert "already used" in second.json()["error_description"]
    await refused_within(browser, access, 1.5)


async def test_a_wrong_verifier_gets_no_token(browser: httpx.AsyncClient, tenant: Tenant) -> None:
    code, _verifier = await code_for(browser, tenant)
    wrong = await redeem(browser, code, pkce()[0])
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert "access_token" not in wrong.json()


async def test_the_code_is_bound_to_its_redirect_uri_and_expires(
    world: World, browser: httpx.AsyncClient, tenant: Tenant
) -> None:
    code, verifier = await code_for(browser, tenant)
    other = await redeem(browser, code, verifier, REDIRECT + "/")
    assert other.json()["error"] == "invalid_grant"
    await world.tokens.harness.db.execute(
        "UPDATE token_authorization_codes SET expire_time = now() - interval '1 s' WHERE use_time IS NULL"
    )
    expired = await redeem(browser, code, verifier)
    assert expired.status_code == 400
    assert expired.json()["error_description"] == "the authorization code expired"


async def test_a_redirect_uri_one_character_off_gets_an_error_page(browser: httpx.AsyncClient) -> None:
    _verifier, challenge = pkce()
    for near in (
        REDIRECT[:-1] + "K",
        REDIRECT + "/",
        REDIRECT[:-1],
        REDIRECT.replace("callback", "callbacc"),
    ):
        refused = await page(browser, request_params(challenge, redirect_uri=near))
        assert refused.status_code == 400, near
        assert "location" not in refused.headers
        assert 'role="alert"' in refused.text
        assert_page_headers(refused)


async def test_an_unknown_client_gets_an_error_page(browser: httpx.AsyncClient) -> None:
    refused = await page(browser, request_params(pkce()[1], client_id="no-such-client"))
    assert refused.status_code == 400
    assert "location" not in refused.headers
    assert "unknown client" in refused.text


async def test_a_missing_state_is_refused(browser: httpx.AsyncClient, tenant: Tenant) -> None:
    _verifier, challenge = pkce()
    refused = await page(browser, request_params(challenge, state=None))
    assert refused.status_code == 303
    query = answer(refused)
    assert query["error"] == "invalid_request"
    assert "state" in query["error_description"]
    assert "code" not in query
    assert query["iss"] == ISSUER
    # Posted without it (the hidden field removed), no code either.
    shown = await page(browser, request_params(challenge))
    fields = {**hidden_fields(shown), "username": tenant.username, "password": PASSWORD}
    del fields["state"]
    posted = await post(browser, fields)
    assert "code" not in answer(posted)


async def test_the_plain_method_and_a_missing_challenge_are_refused(browser: httpx.AsyncClient) -> None:
    verifier, _challenge = pkce()
    for overrides in (
        {"code_challenge": verifier, "code_challenge_method": "plain"},
        {"code_challenge": None},
    ):
        refused = await page(browser, request_params("x" * 43, **overrides))
        assert refused.status_code == 303
        query = answer(refused)
        assert query["error"] == "invalid_request"
        assert "code" not in query


async def test_a_cross_site_login_post_is_refused(
    browser: httpx.AsyncClient, world: World, tenant: Tenant
) -> None:
    shown = await page(browser, request_params(pkce()[1]))
    fields = {**hidden_fields(shown), "username": tenant.username, "password": PASSWORD}
    attacks = [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ]
    for headers in attacks:
        refused = await post(browser, fields, headers)
        assert refused.status_code == 403, headers
        assert "location" not in refused.headers
    forged = await post(browser, {**fields, "csrf_token": secrets.token_urlsafe(32)})
    assert forged.status_code == 403
    # A browser that never loaded the page (an attacker's form) has no cookie.
    async with httpx.AsyncClient(base_url=world.front_url, follow_redirects=False) as stranger:
        refused = await post(stranger, fields)
        assert refused.status_code == 403
        assert "location" not in refused.headers
    # The genuine page still works: nothing above used it up.
    posted = await post(browser, fields)
    assert "code" in answer(posted)


OPEN_REDIRECTS = [
    "https://evil.example/console/callback",
    "http://evil.example/console/callback",
    "http://127.0.0.1:8080@evil.example/console/callback",
    "http://evil.example@127.0.0.1:8080/console/callback",
    "http://127.0.0.1:8080.evil.example/console/callback",
    "//evil.example/console/callback",
    "//127.0.0.1:8080/console/callback",
    "/console/callback",
    "http:%2F%2F127.0.0.1:8080/console/callback",
    "http%3A%2F%2F127.0.0.1%3A8080%2Fconsole%2Fcallback",
    f"{REDIRECT}/../../evil",
    f"{REDIRECT}/extra",
    f"{REDIRECT}?next=https://evil.example",
    f"{REDIRECT}#https://evil.example",
    f"{REDIRECT}%23x",
    f"{REDIRECT}%2F..%2F..%2Fevil",
    "HTTP://127.0.0.1:8080/console/callback",
    "http://127.0.0.1:8081/console/callback",
    "https://127.0.0.1:8080/console/callback",
    "http://localhost:8080/console/callback",
    "javascript:alert(1)//127.0.0.1:8080/console/callback",
    f" {REDIRECT}",
    f"{REDIRECT}\t",
]


async def test_no_parameter_makes_an_open_redirect(browser: httpx.AsyncClient, tenant: Tenant) -> None:
    _verifier, challenge = pkce()
    for uri in OPEN_REDIRECTS:
        for overrides in ({}, {"response_type": "token"}, {"state": None}):
            refused = await page(browser, request_params(challenge, redirect_uri=uri, **overrides))
            assert "location" not in refused.headers, (uri, overrides)
            assert refused.status_code == 400, (uri, overrides)
    # A redirect URI sent twice: which one counts is undecidable, so neither does.
    twice = await browser.get(
        "/oauth2/authorize?"
        + urlencode([*request_params(challenge).items(), ("redirect_uri", "https://evil.example/")])
    )
    assert twice.status_code == 400
    assert "location" not in twice.headers
    # `next`, `return_to` and the like are never read: the answer goes to the registered URI only.
    lures = {
        "next": "https://evil.example/",
        "return_to": "https://evil.example/",
        "redirect": "//evil.example",
    }
    errored = await page(browser, {**request_params(challenge, state=None), **lures})
    assert "evil" not in errored.headers["location"]
    answer(errored)
    _verifier, challenge = pkce()
    shown = await page(browser, {**request_params(challenge), **lures})
    assert shown.status_code == 200
    fields = {**hidden_fields(shown), **lures, "username": tenant.username, "password": PASSWORD}
    posted = await post(browser, fields)
    assert "evil" not in posted.headers["location"]
    assert "code" in answer(posted)
    # The form's redirect_uri swapped for another: refused with a page, no code anywhere.
    shown = await page(browser, request_params(challenge))
    swapped = {**hidden_fields(shown), "redirect_uri": "https://evil.example/cb", "username": tenant.username}
    refused = await post(browser, {**swapped, "password": PASSWORD})
    assert refused.status_code == 400
    assert "location" not in refused.headers


async def test_thirty_wrong_passwords_lock_the_account_and_its_owner_gets_back_in(
    browser: httpx.AsyncClient, tenant: Tenant
) -> None:
    shown = await page(browser, request_params(pkce()[1]))
    fields = hidden_fields(shown)
    statuses = []
    locked: httpx.Response | None = None
    for attempt in range(30):
        wrong = await post(browser, {**fields, "username": tenant.username, "password": f"guess {attempt}"})
        assert "location" not in wrong.headers
        assert 'role="alert"' in wrong.text
        statuses.append(wrong.status_code)
        if wrong.status_code == 429:
            locked = wrong
        else:
            assert wrong.status_code == 400
            assert "Wrong username or password." in wrong.text
    assert locked is not None, statuses
    assert statuses[:4] == [400] * 4
    assert statuses.count(429) >= 20, statuses
    assert "Too many failed sign-ins for this account. Try again in" in locked.text
    assert int(locked.headers["retry-after"]) <= MAX_LOCKOUT_SECONDS
    # An unknown username is refused in the same words: the page does not tell which names exist.
    unknown = await post(browser, {**fields, "username": f"nobody-{secrets.token_hex(4)}", "password": "x"})
    assert "Wrong username or password." in unknown.text
    # The owner, with the right password, once the lock lapses (at most MAX_LOCKOUT_SECONDS).
    deadline = time.monotonic() + MAX_LOCKOUT_SECONDS + 5
    while True:
        verifier, challenge = pkce()
        shown = await page(browser, request_params(challenge))
        posted = await post(
            browser, {**hidden_fields(shown), "username": tenant.username, "password": PASSWORD}
        )
        if posted.status_code == 303:
            break
        assert posted.status_code == 429, posted.text
        assert time.monotonic() < deadline, "the owner stayed locked out"
        await asyncio.sleep(int(posted.headers["retry-after"]))
    tokens = await redeem(browser, answer(posted)["code"], verifier)
    assert tokens.status_code == 200


def test_a_failed_sign_in_counts_against_its_address() -> None:
    assert failed_authentication("/oauth2/authorize", 400, "POST")
    assert failed_authentication("/oauth2/authorize", 403, "POST")
    assert not failed_authentication("/oauth2/authorize", 429, "POST")
    assert not failed_authentication("/oauth2/authorize", 303, "POST")
    assert not failed_authentication("/oauth2/authorize", 400, "GET")
    assert failed_authentication("/oauth2/token", 400, "POST")
