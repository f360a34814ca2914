"""The credential a token service call carries in its metadata (`authorization`), and the rule that
a call carries one credential, never two.

Two credentials in one request (two `authorization` entries; client credentials in the body and
an `authorization` entry as well) leave it to whoever reads them which one counts, so a request
holding one it may not use and one it may could pass where it should not: refused with
invalid_request, whichever they are (RFC 6749 2.3: one authentication method per request).

- IssueToken, ExchangeToken, Revoke and RegisterClient authenticate with what their body holds
  (client credentials, the initial access token): no `authorization` entry at all.
- Introspect has no client fields: the client sends `authorization: Basic` (what the edge forwards
  of /oauth2/introspect's client authentication).
- The admin RPCs, IssueAgentToken and ListAuditEvents: one `authorization: Bearer` entry.
"""

from __future__ import annotations

from services.runtime.auth.basic import decode_basic
from services.runtime.context import RpcContext
from services.token.oauth import oauth_error

AUTHORIZATION = "authorization"


def authorization(context: RpcContext) -> str | None:
    """The one `authorization` entry of the call, None without one; invalid_request for several."""
    values = [value for name, value in context.invocation_metadata() or () if name == AUTHORIZATION]
    if len(values) > 1:
        raise oauth_error("invalid_request", "more than one authorization entry: send one credential")
    if not values:
        return None
    value = values[0]
    return value if isinstance(value, str) else value.decode("latin-1")


def _credentials(context: RpcContext, scheme: str) -> str | None:
    """The credentials of an `authorization: <scheme> ...` entry; "" when the entry has another form."""
    value = authorization(context)
    if value is None:
        return None
    given, _, credentials = value.strip().partition(" ")
    return credentials.strip() if given.lower() == scheme.lower() else ""


def bearer_token(context: RpcContext) -> str | None:
    """The token of the call's `authorization: Bearer` entry, None when there is none or it is not one."""
    return _credentials(context, "Bearer") or None


def basic_client(context: RpcContext) -> tuple[str, str]:
    """The client id and secret of the call's `authorization: Basic` entry; invalid_client without one."""
    credentials = _credentials(context, "Basic")
    client = decode_basic(credentials) if credentials else None
    if client is None:
        raise oauth_error("invalid_client", "authenticate the client: `authorization: Basic <id:secret>`")
    return client


def body_only(context: RpcContext) -> None:
    """invalid_request when a call that authenticates with its body carries an `authorization` entry."""
    if authorization(context) is not None:
        raise oauth_error(
            "invalid_request",
            "this call authenticates with its body; an authorization entry as well is a second credential",
        )
