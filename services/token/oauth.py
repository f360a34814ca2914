"""OAuth error codes (RFC 6749 5.2, RFC 6750 3.1, RFC 7591 3.2.2, RFC 8693 2.2.2, RFC 8707) as domain errors.

The message is `<code>: <description>`, so the edge can answer `{"error": code, ...}` by splitting
it; the gRPC status is the runtime's mapping of the domain error class below.
"""

from __future__ import annotations

from typing import Literal

from services.runtime.errors import DomainError, InvalidArgument, PermissionDenied, Unauthenticated

OAuthCode = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "invalid_token",
    "access_denied",
    "invalid_client_metadata",
    "invalid_redirect_uri",
    "insufficient_scope",
]

_ERROR_CLASS: dict[OAuthCode, type[DomainError]] = {
    "invalid_request": InvalidArgument,
    "invalid_client": Unauthenticated,
    "invalid_grant": InvalidArgument,
    "unauthorized_client": PermissionDenied,
    "unsupported_grant_type": InvalidArgument,
    "invalid_scope": InvalidArgument,
    "invalid_target": InvalidArgument,
    "invalid_token": Unauthenticated,
    "access_denied": PermissionDenied,
    "invalid_client_metadata": InvalidArgument,
    "invalid_redirect_uri": InvalidArgument,
    "insufficient_scope": PermissionDenied,
}


def oauth_error(code: OAuthCode, description: str) -> DomainError:
    """The domain error to raise for OAuth error `code`."""
    return _ERROR_CLASS[code](f"{code}: {description}")
