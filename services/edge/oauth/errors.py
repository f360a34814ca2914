"""OAuth error responses, and the one table from a token service failure to the OAuth error.

OAuth client libraries read errors from the body (RFC 6749 section 5.2: `error`, `error_description`)
and the `WWW-Authenticate` challenge, not from the edge's own `{"code", "message"}` shape, so the
/oauth2 endpoints answer every failure here.

The token service names the OAuth error at the start of its status message (`invalid_grant: refresh
token reused`); a status without one is the client's fault by its code (the defaults below, per kind
of endpoint) or, for anything else, the mesh's: then the edge's one gRPC-to-HTTP table gives the status.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from http import HTTPStatus

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.edge.errors import GRPC_TO_HTTP, HttpError
from services.edge.routes import Content, Handler

# Every OAuth response carries credentials or answers about them: never cached (RFC 6749 section 5.1).
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}

# The challenge of a 401 at an endpoint the client authenticates to (RFC 6749 section 5.2).
BASIC_CHALLENGE = 'Basic realm="macp"'


class Endpoint(enum.Enum):
    """Who authenticates at an endpoint, which decides what a bare gRPC status means there."""

    # /oauth2/token, /oauth2/revoke, /oauth2/introspect: the client, by HTTP Basic or form fields.
    CLIENT = "client"
    # /oauth2/register: an initial access token, as a Bearer token (RFC 7591 section 3, RFC 6750).
    REGISTRATION = "registration"


# The HTTP status of each OAuth error code the edge answers with.
OAUTH_STATUS: dict[str, HTTPStatus] = {
    # RFC 6749 section 5.2 (every token endpoint error is 400 but invalid_client).
    "invalid_request": HTTPStatus.BAD_REQUEST,
    "invalid_client": HTTPStatus.UNAUTHORIZED,
    "invalid_grant": HTTPStatus.BAD_REQUEST,
    "unauthorized_client": HTTPStatus.BAD_REQUEST,
    "unsupported_grant_type": HTTPStatus.BAD_REQUEST,
    "invalid_scope": HTTPStatus.BAD_REQUEST,
    # RFC 6749 section 4.1.2.1; the token service uses it for a tenant mismatch or too deep a delegation.
    "access_denied": HTTPStatus.BAD_REQUEST,
    # RFC 8693 section 2.2.2 and RFC 8707.
    "invalid_target": HTTPStatus.BAD_REQUEST,
    # RFC 7009 section 2.2.1.
    "unsupported_token_type": HTTPStatus.BAD_REQUEST,
    # RFC 7591 section 3.2.2.
    "invalid_redirect_uri": HTTPStatus.BAD_REQUEST,
    "invalid_client_metadata": HTTPStatus.BAD_REQUEST,
    "invalid_software_statement": HTTPStatus.BAD_REQUEST,
    "unapproved_software_statement": HTTPStatus.BAD_REQUEST,
    # RFC 6750 section 3.1, for the initial access token of a registration.
    "invalid_token": HTTPStatus.UNAUTHORIZED,
    "insufficient_scope": HTTPStatus.FORBIDDEN,
    # RFC 6749 section 4.1.2.1, shown at the authorization endpoint (no redirect: endpoints.py).
    "unsupported_response_type": HTTPStatus.BAD_REQUEST,
    # Not the client's fault; the HTTP status comes from the edge's gRPC table instead.
    "temporarily_unavailable": HTTPStatus.SERVICE_UNAVAILABLE,
    "server_error": HTTPStatus.INTERNAL_SERVER_ERROR,
}

# The OAuth error of a status whose message names none. Codes missing here are not the client's fault.
STATUS_DEFAULTS: dict[Endpoint, dict[grpc.StatusCode, str]] = {
    Endpoint.CLIENT: {
        grpc.StatusCode.INVALID_ARGUMENT: "invalid_request",
        grpc.StatusCode.OUT_OF_RANGE: "invalid_request",
        grpc.StatusCode.UNAUTHENTICATED: "invalid_client",
        grpc.StatusCode.PERMISSION_DENIED: "unauthorized_client",
        grpc.StatusCode.NOT_FOUND: "invalid_grant",
        grpc.StatusCode.FAILED_PRECONDITION: "invalid_grant",
    },
    Endpoint.REGISTRATION: {
        grpc.StatusCode.INVALID_ARGUMENT: "invalid_client_metadata",
        grpc.StatusCode.OUT_OF_RANGE: "invalid_client_metadata",
        grpc.StatusCode.ALREADY_EXISTS: "invalid_client_metadata",
        grpc.StatusCode.FAILED_PRECONDITION: "invalid_client_metadata",
        grpc.StatusCode.UNAUTHENTICATED: "invalid_token",
        grpc.StatusCode.PERMISSION_DENIED: "insufficient_scope",
    },
}

# A bare INVALID_ARGUMENT is the validation interceptor refusing a field before the service runs
# ("resource: value must be a valid URI"); some fields have an OAuth error of their own.
FIELD_ERRORS: dict[Endpoint, dict[str, str]] = {
    Endpoint.CLIENT: {"scope": "invalid_scope", "resource": "invalid_target", "audience": "invalid_target"},
    Endpoint.REGISTRATION: {"redirect_uris": "invalid_redirect_uri"},
}

# Failures of the mesh rather than of the request: worth retrying later.
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)

# `invalid_grant: refresh token reused` (the token service's convention); the code is matched in any case.
_NAMED = re.compile(r"\s*([A-Za-z_]+)\s*:\s*(.*)", re.DOTALL)

# How long the token service asks a locked-out caller to wait, at the end of its description.
_RETRY_AFTER = re.compile(r"retry after (\d+) s")

# The first violation of the validation interceptor's message: `metadata.redirect_uris: ...`.
_VIOLATION = re.compile(r"\s*(?:[\w\[\]]+\.)*(\w+)(?:\[\d+\])?\s*:")

OAUTH_ERROR = Content(
    name="OAuthError",
    schema={
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "enum": sorted(OAUTH_STATUS)},
            "error_description": {"type": "string", "description": "what went wrong, for the developer"},
        },
    },
)


class OAuthError(Exception):
    """An OAuth error response: the RFC's code, a description, the HTTP status it travels with and,
    for a refusal to try again yet, the seconds to wait (`Retry-After`)."""

    def __init__(
        self,
        error: str,
        description: str,
        status: HTTPStatus | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status or OAUTH_STATUS[error]
        self.retry_after = retry_after


def _throttled(name: str, description: str) -> OAuthError:
    """A credential refused for now (the token service's guessing limit: RESOURCE_EXHAUSTED with the
    error a wrong credential gets, `invalid_grant` or `invalid_client`, and `retry after N s` in the
    description): that error in the body, as OAuth libraries read it, with 429 and `Retry-After`
    (RFC 6585), so a client knows to wait rather than to give up."""
    wait = _RETRY_AFTER.search(description)
    return OAuthError(name, description, HTTPStatus.TOO_MANY_REQUESTS, int(wait.group(1)) if wait else 1)


def oauth_error_of(error: grpc.aio.AioRpcError, endpoint: Endpoint) -> OAuthError:
    """The OAuth error a failed token service call means at `endpoint`."""
    code = error.code()
    details = error.details() or code.name.lower()
    named = _NAMED.fullmatch(details)
    if named is not None and named.group(1).lower() in OAUTH_STATUS:
        name = named.group(1).lower()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _throttled(name, named.group(2).strip() or name)
        status = OAUTH_STATUS[name]
        if name in ("temporarily_unavailable", "server_error"):
            status = GRPC_TO_HTTP.get(code, status)
        return OAuthError(name, named.group(2).strip() or name, status)
    default = STATUS_DEFAULTS[endpoint].get(code)
    violation = _VIOLATION.match(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT and violation is not None:
        default = FIELD_ERRORS[endpoint].get(violation.group(1), default)
    if default is not None:
        return OAuthError(default, details)
    status = GRPC_TO_HTTP.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
    name = "temporarily_unavailable" if code in _TRANSIENT else "server_error"
    return OAuthError(name, details, status)


def _description(text: str) -> str:
    """RFC 6749 allows only printable ASCII without `"` and `\\` in error_description."""
    cleaned = text.replace('"', "'").replace("\\", "/")
    return "".join(c if " " <= c <= "~" else "?" for c in cleaned)[:500]


def oauth_error_response(error: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if error.error == "invalid_client":
        headers["www-authenticate"] = BASIC_CHALLENGE
    elif error.error in ("invalid_token", "insufficient_scope"):
        headers["www-authenticate"] = f'Bearer error="{error.error}"'
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    body = {"error": error.error, "error_description": _description(error.description)}
    return JSONResponse(body, status_code=error.status.value, headers=headers)


def oauth_endpoint(endpoint: Endpoint) -> Callable[[Handler], Handler]:
    """Wraps a handler so that every failure it meets (its own, the body's, the RPC's) is an OAuth error."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OAuthError as error:
                return oauth_error_response(error)
            except HttpError as error:  # the body: too large
                return oauth_error_response(OAuthError("invalid_request", error.message, error.status))
            except grpc.aio.AioRpcError as error:
                return oauth_error_response(oauth_error_of(error, endpoint))

        return handle

    return wrap
