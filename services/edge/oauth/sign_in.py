"""The authorization endpoint (RFC 6749 3.1, 4.1; RFC 7636; RFC 9207; RFC 9700 2.1, 4.1, 4.4):
`GET /oauth2/authorize` shows the sign-in page, `POST /oauth2/authorize` signs the user in and
sends the browser back to the client with a code.

Nothing here redirects before the token service has said the client exists and registered this
exact redirect URI (CheckAuthorization); until then every refusal is a page. The only place a
browser is ever sent is that redirect URI, with `code` or `error`, `state` as given, and `iss`
(RFC 9207, so a client talking to several servers can tell whose answer it is). Parameters such
as `next` or `return_to` are never read. OpenID Connect's `nonce` rides along like the others, to
the code and its ID token; `scope=openid` is the token service's to grant.

CSRF: the GET sets a random token in a cookie (SameSite=Strict, HttpOnly; `__Host-` prefixed, and
so Path=/ and Secure, when the issuer is https) and in the form; the POST must carry both, equal,
and must not come from another site (`Sec-Fetch-Site`) or another origin (`Origin`). A failed
sign-in answers 400 (counted against the address by services/edge/source_limits.py) and the token
service counts it against the account; a locked account answers 429 with its wait, in words.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlencode, urlsplit, urlunsplit

import grpc
from macp.token.v1 import token_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import EdgeContext, edge_context
from services.edge.errors import HttpError
from services.edge.oauth.documents import MAX_NONCE_LENGTH
from services.edge.oauth.errors import Endpoint, OAuthError, oauth_error_of
from services.edge.oauth.forms import Form, parse_form, read_form
from services.edge.oauth.page import SignInForm, error_page, redirect_page, sign_in_page

AUTHORIZE_PATH = "/oauth2/authorize"
CSRF_FIELD = "csrf_token"
CSRF_COOKIE = "macp_csrf"
SECURE_CSRF_COOKIE = "__Host-macp_csrf"
CSRF_COOKIE_SECONDS = 3600
# The authorization request's parameters the page posts back (RFC 6749 4.1.1, RFC 7636, RFC 8707).
REQUEST_FIELDS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "resource",
    "nonce",
)
# Errors the token service raises only once the redirect URI is known to be the client's.
REDIRECTABLE = frozenset({"unauthorized_client", "invalid_scope", "invalid_target", "access_denied"})
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
# What RFC 6749 appendix A allows in error_description: printable ASCII but `"` and `\`.
_UNSAFE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
_WRONG_CREDENTIALS = "Wrong username or password."
_NAMED = re.compile(r"\s*([a-z_]+)\s*:\s*(.*)", re.DOTALL)


@dataclass
class Refusal(Exception):
    """A refusal shown as a page: the client or its redirect URI could not be trusted."""

    title: str
    message: str
    status: int = HTTPStatus.BAD_REQUEST


@dataclass
class BackToClient(Exception):
    """An error sent back to the (verified) redirect URI (RFC 6749 4.1.2.1)."""

    error: str
    description: str


@dataclass(frozen=True)
class Verified:
    """An authorization request whose client and redirect URI the token service vouched for."""

    params: Form
    client_id: str
    redirect_uri: str
    client_name: str


def cookie_name(issuer: str) -> str:
    return SECURE_CSRF_COOKIE if urlsplit(issuer).scheme == "https" else CSRF_COOKIE


def _issuer_origin(issuer: str) -> str:
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}".lower()


def with_params(redirect_uri: str, params: dict[str, str]) -> str:
    """`redirect_uri` with `params` added to its query, which it may already have (RFC 6749 3.1.2)."""
    parts = urlsplit(redirect_uri)
    added = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def _rpc_refusal(error: grpc.aio.AioRpcError) -> Refusal:
    oauth = oauth_error_of(error, Endpoint.CLIENT)
    if oauth.status >= 500:
        return Refusal(
            "Sign-in is unavailable", "Sign-in is unavailable right now; try again soon.", oauth.status
        )
    return Refusal("This sign-in request is not valid", oauth.description)


def _named(error: grpc.aio.AioRpcError) -> tuple[str, str] | None:
    """The OAuth error the token service named in its message, if it is one to send back."""
    named = _NAMED.fullmatch(error.details() or "")
    codes = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    if named is None or named.group(1) not in REDIRECTABLE or error.code() not in codes:
        return None
    return named.group(1), named.group(2).strip()


async def _verify(edge: EdgeContext, params: Form) -> Verified:
    """The request's client and redirect URI, vouched for by the token service, then the rest of the
    request checked (BackToClient from here on)."""
    client_id = params.get("client_id")
    redirect_uri = params.get("redirect_uri")
    if not client_id or not redirect_uri:
        missing = "client_id" if not client_id else "redirect_uri"
        raise Refusal("This sign-in request is not valid", f"the {missing} parameter is missing")
    try:
        checked: pb.CheckAuthorizationResponse = await edge.token.CheckAuthorization(
            pb.CheckAuthorizationRequest(
                client_id=client_id,
                redirect_uri=redirect_uri,
                scope=params.get("scope"),
                resource=params.all("resource"),
            ),
            timeout=edge.timeout,
        )
    except grpc.aio.AioRpcError as error:
        named = _named(error)
        if named is None:
            raise _rpc_refusal(error) from None
        raise BackToClient(*named) from None
    verified = Verified(params, client_id, redirect_uri, checked.client_name)
    _check_request(params)
    return verified


def _check_request(params: Form) -> None:
    response_type = params.get("response_type")
    if not response_type:
        raise BackToClient("invalid_request", "the response_type parameter is missing")
    if response_type != "code":
        raise BackToClient("unsupported_response_type", "only response_type=code is supported")
    if not params.get("state"):
        raise BackToClient("invalid_request", "the state parameter is required")
    challenge = params.get("code_challenge")
    if not challenge:
        raise BackToClient("invalid_request", "the code_challenge parameter is required (PKCE, RFC 7636)")
    if params.get("code_challenge_method") != "S256":
        raise BackToClient(
            "invalid_request", "code_challenge_method must be S256 (plain and others are not supported)"
        )
    if not _CHALLENGE.fullmatch(challenge):
        raise BackToClient("invalid_request", "code_challenge must be 43 base64url characters (S256)")
    if len(params.get("nonce")) > MAX_NONCE_LENGTH:
        raise BackToClient("invalid_request", f"nonce must be at most {MAX_NONCE_LENGTH} characters")


def _back(edge: EdgeContext, verified_uri: str, params: Form, answer: dict[str, str]) -> Response:
    state = params.get("state")
    query = {**answer, **({"state": state} if state else {}), "iss": edge.settings.token_issuer}
    return redirect_page(with_params(verified_uri, query), verified_uri)


def _error_back(edge: EdgeContext, verified: Verified, refusal: BackToClient) -> Response:
    description = _UNSAFE.sub("?", refusal.description)[:500]
    answer = {"error": refusal.error, "error_description": description}
    return _back(edge, verified.redirect_uri, verified.params, answer)


def _hidden(params: Form) -> dict[str, list[str]]:
    return {name: params.all(name) for name in REQUEST_FIELDS if params.all(name)}


def _page(
    edge: EdgeContext,
    verified: Verified,
    csrf_token: str,
    *,
    username: str = "",
    error: str = "",
    status: int = HTTPStatus.OK,
    headers: dict[str, str] | None = None,
) -> Response:
    form = SignInForm(
        hidden=_hidden(verified.params),
        client_name=verified.client_name,
        csrf_token=csrf_token,
        redirect_uri=verified.redirect_uri,
        username=username,
        error=error,
        headers=headers or {},
    )
    response = sign_in_page(form, status)
    issuer = edge.settings.token_issuer
    name = cookie_name(issuer)
    secure = name == SECURE_CSRF_COOKIE
    response.set_cookie(
        name,
        csrf_token,
        max_age=CSRF_COOKIE_SECONDS,
        path="/" if secure else AUTHORIZE_PATH,
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    return response


def _refused(refusal: Refusal) -> Response:
    return error_page(refusal.title, refusal.message, refusal.status)


async def authorize_page(request: Request) -> Response:
    """GET: the sign-in page for a request whose client and redirect URI check out."""
    edge = edge_context(request)
    try:
        params = parse_form(request.url.query, "the query")
    except OAuthError as error:
        return _refused(Refusal("This sign-in request is not valid", error.description))
    verified = await _verified_or_answer(edge, params)
    if isinstance(verified, Response):
        return verified
    return await _show(edge, request, verified)


async def _verified_or_answer(edge: EdgeContext, params: Form) -> Verified | Response:
    """The request as CheckAuthorization vouched for it, or the answer to a refused one: an error
    page while its redirect URI is not known to be the client's, else the error sent back there."""
    try:
        return await _verify(edge, params)
    except Refusal as refusal:
        return _refused(refusal)
    except BackToClient as refusal:
        return _error_back(edge, _vouched(params), refusal)


def _vouched(params: Form) -> Verified:
    """The request once CheckAuthorization vouched for its redirect URI (a BackToClient says it did)."""
    return Verified(params, params.get("client_id"), params.get("redirect_uri"), "")


async def _show(edge: EdgeContext, request: Request, verified: Verified) -> Response:
    current = request.cookies.get(cookie_name(edge.settings.token_issuer), "")
    token = current if _CSRF_TOKEN.fullmatch(current) else secrets.token_urlsafe(32)
    return _page(edge, verified, token)


def _cross_site(request: Request, issuer: str) -> str | None:
    """Why this POST is not the sign-in page's own, or None when it is."""
    site = request.headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"the form was sent from another site (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() != _issuer_origin(issuer):
        return "the form was sent from another origin"
    cookie = request.cookies.get(cookie_name(issuer), "")
    if not _CSRF_TOKEN.fullmatch(cookie):
        return "the sign-in page's cookie is missing (cookies must be allowed for this site)"
    return None


_FORGED = "This sign-in form was not sent from this site's own page, so it was refused."


async def sign_in(request: Request) -> Response:
    """POST: check the form is the page's own, then the credentials; on success, the code."""
    edge = edge_context(request)
    issuer = edge.settings.token_issuer
    problem = _cross_site(request, issuer)
    if problem is not None:
        return error_page("Sign-in refused", f"{_FORGED} ({problem})", HTTPStatus.FORBIDDEN)
    try:
        form = await read_form(request, edge.settings.max_body_bytes)
    except OAuthError as error:
        return _refused(Refusal("This sign-in request is not valid", error.description, error.status))
    except HttpError as error:
        return _refused(Refusal("This sign-in request is not valid", error.message, error.status))
    cookie = request.cookies.get(cookie_name(issuer), "")
    if not hmac.compare_digest(form.get(CSRF_FIELD).encode(), cookie.encode()):
        return error_page("Sign-in refused", f"{_FORGED} (the form's token differs)", HTTPStatus.FORBIDDEN)
    verified = await _verified_or_answer(edge, form)
    if isinstance(verified, Response):
        return verified
    return await _sign_in(edge, verified, cookie)


async def _sign_in(edge: EdgeContext, verified: Verified, csrf_token: str) -> Response:
    form = verified.params
    username, password = form.get("username"), form.get("password")
    if not username or not password:
        error = "Enter your username and password."
        return _page(
            edge, verified, csrf_token, username=username, error=error, status=HTTPStatus.BAD_REQUEST
        )
    try:
        issued: pb.AuthorizeResponse = await edge.token.Authorize(
            pb.AuthorizeRequest(
                client_id=verified.client_id,
                redirect_uri=verified.redirect_uri,
                scope=form.get("scope"),
                resource=form.all("resource"),
                code_challenge=form.get("code_challenge"),
                code_challenge_method=form.get("code_challenge_method"),
                username=username,
                password=password,
                nonce=form.get("nonce"),
            ),
            timeout=edge.timeout,
        )
    except grpc.aio.AioRpcError as error:
        return _failed(edge, verified, csrf_token, username, error)
    return _back(edge, verified.redirect_uri, form, {"code": issued.code})


def _failed(
    edge: EdgeContext, verified: Verified, csrf_token: str, username: str, error: grpc.aio.AioRpcError
) -> Response:
    named = _named(error)
    if named is not None:
        return _error_back(edge, verified, BackToClient(*named))
    oauth = oauth_error_of(error, Endpoint.CLIENT)
    if oauth.status == HTTPStatus.TOO_MANY_REQUESTS and oauth.retry_after is not None:
        wait = oauth.retry_after
        message = f"Too many failed sign-ins for this account. Try again in {in_words(wait)}."
        return _page(
            edge,
            verified,
            csrf_token,
            username=username,
            error=message,
            status=HTTPStatus.TOO_MANY_REQUESTS,
            headers={"retry-after": str(wait)},
        )
    if oauth.error == "invalid_grant":
        return _page(
            edge,
            verified,
            csrf_token,
            username=username,
            error=_WRONG_CREDENTIALS,
            status=HTTPStatus.BAD_REQUEST,
        )
    if oauth.status >= 500:
        return _refused(_rpc_refusal(error))
    return _page(edge, verified, csrf_token, username=username, error=oauth.description, status=oauth.status)


def in_words(seconds: int) -> str:
    """`75` as "1 minute and 15 seconds"."""
    minutes, rest = divmod(max(1, seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [
        f"{count} {unit}{'' if count == 1 else 's'}"
        for count, unit in ((hours, "hour"), (minutes, "minute"), (rest, "second"))
        if count
    ]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
