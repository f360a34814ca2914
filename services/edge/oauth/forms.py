"""What an OAuth request sends: its form (RFC 6749 appendix B) and who it authenticates as.

Forms are parsed here rather than with Starlette's `request.form()`, which needs python-multipart and
would let a parameter repeat silently; RFC 6749 section 3.2 forbids repeats (RFC 8693 allows them for
`resource` and `audience`) and says an empty value counts as absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request

from services.edge.http import read_body
from services.edge.oauth.errors import OAuthError
from services.runtime.auth.basic import decode_basic

FORM = "application/x-www-form-urlencoded"

# The parameters RFC 8693 section 2.1 lets a request repeat.
REPEATABLE = frozenset({"resource", "audience"})

# More fields than any OAuth request has; bounds the work a hostile body can cause.
MAX_FIELDS = 64


@dataclass(frozen=True)
class Form:
    """The non-empty parameters of a form body, each with its values in order."""

    fields: dict[str, list[str]]

    def get(self, name: str) -> str:
        """The parameter's value, or "" when it was not sent."""
        values = self.fields.get(name)
        return values[0] if values else ""

    def require(self, name: str) -> str:
        value = self.get(name)
        if not value:
            raise OAuthError("invalid_request", f"the {name} parameter is missing")
        return value

    def all(self, name: str) -> list[str]:
        return list(self.fields.get(name, ()))


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, max_bytes: int) -> Form:
    """The request's form body; anything else is an `invalid_request`."""
    body = await read_body(request, max_bytes)
    if body and media_type(request) != FORM:  # an empty body is an empty form, whatever it is labelled
        raise OAuthError("invalid_request", f"send the body as {FORM}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", f"the body is not a valid form: {exc}") from None
    return parse_form(text, "the body")


def parse_form(text: str, what: str) -> Form:
    """The parameters of form-encoded `text` (a body, or a query string: `what` says which)."""
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", f"{what} is not a valid form: {exc}") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        if value == "":
            continue
        values = fields.setdefault(name, [])
        if values and name not in REPEATABLE:
            raise OAuthError("invalid_request", f"the {name} parameter is sent more than once")
        values.append(value)
    return Form(fields)


@dataclass(frozen=True)
class ClientCredentials:
    """The client a request authenticates as; `method` is how (an RFC 7591 auth method name)."""

    client_id: str
    client_secret: str
    method: str


def _basic(header: str) -> tuple[str, str]:
    """The client id and secret of an HTTP Basic `Authorization` header value (RFC 6749 section 2.3.1)."""
    credentials = decode_basic(header)
    if credentials is None:
        raise OAuthError("invalid_client", "the Basic credentials are not base64 of id:secret")
    return credentials


def _authorization(request: Request, scheme: str) -> str | None:
    """The credentials of an `Authorization: <scheme> <credentials>` header, None without the header.

    Two Authorization headers are two credentials (which one counts would depend on who reads them):
    refused, as a request authenticating more than one way is (RFC 6749 section 2.3)."""
    headers = request.headers.getlist("authorization")
    if not headers:
        return None
    if len(headers) > 1:
        raise OAuthError("invalid_request", "send one Authorization header, not several")
    given, _, credentials = headers[0].strip().partition(" ")
    if given.lower() != scheme.lower() or not credentials.strip():
        return ""
    return credentials.strip()


def client_credentials(request: Request, form: Form) -> ClientCredentials:
    """The client, from HTTP Basic (`client_secret_basic`), the form (`client_secret_post`), or only its
    id in the form (`none`, a public client); the token service checks the secret.

    A client must use one method (RFC 6749 section 2.3); sending its id in the form as well as in the
    header is tolerated, as many libraries do, when the two agree.
    """
    basic = _authorization(request, "Basic")
    if basic == "":
        raise OAuthError("invalid_client", "the Authorization header is not HTTP Basic client credentials")
    if basic is not None:
        client_id, secret = _basic(basic)
        if form.get("client_secret"):
            raise OAuthError("invalid_request", "send the client secret in the Authorization header only")
        if form.get("client_id") not in ("", client_id):
            raise OAuthError("invalid_request", "the client_id parameter differs from the Basic credentials")
        return ClientCredentials(client_id, secret, "client_secret_basic")
    client_id = form.get("client_id")
    if not client_id:
        raise OAuthError(
            "invalid_client", "authenticate the client with HTTP Basic or client_id/client_secret"
        )
    secret = form.get("client_secret")
    return ClientCredentials(client_id, secret, "client_secret_post" if secret else "none")


def bearer_token(request: Request) -> str:
    """The `Authorization: Bearer` token (RFC 6750 section 2.1), or "" without an Authorization header."""
    token = _authorization(request, "Bearer")
    if token == "":
        raise OAuthError("invalid_token", "the Authorization header is not a Bearer token")
    return token or ""
