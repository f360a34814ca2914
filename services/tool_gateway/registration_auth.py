"""What a registration must say about how the gateway authenticates to its server (`UpstreamAuth`).

A STATIC server names one header in `static_credential`; a CLIENT_CREDENTIALS server its token
endpoint and the gateway's client there in `client_credentials`; no other mode takes either. The
one secret of each (the header's value, the client secret) is split off here: it is sealed before
it is stored (upstream_secrets.py), and the stored registration, which every read returns, never
holds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime.errors import InvalidArgument

# RFC 9110 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the gateway must not be told to send: hop-by-hop ones (RFC 9110 7.6.1), those that frame
# the request, and those the MCP transport sets itself. A credential in any of them would break the
# request or be overwritten.
RESERVED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "accept",
        "accept-encoding",
        "expect",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)
# A header value the gateway sends as is: visible ASCII, with inner spaces or tabs (RFC 9110 5.5,
# less obs-text, which no credential needs).
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
# RFC 6749 3.3: scope-token = 1*NQCHAR, separated by single spaces.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s#]+")

STATIC = "tool_server.static_credential"
OAUTH = "tool_server.client_credentials"


@dataclass(frozen=True)
class AuthParts:
    """The checked authentication of a registration: what is stored as is, and its secret."""

    static: pb.StaticCredential | None
    oauth: pb.OAuthClientCredentials | None
    secret: str  # empty for NONE and TOKEN_EXCHANGE


def checked_auth(draft: pb.ToolServer) -> AuthParts:
    """The registration's credential, checked; InvalidArgument naming each field that is wrong."""
    auth = draft.auth or pb.UPSTREAM_AUTH_NONE
    problems: list[str] = []
    if auth != pb.UPSTREAM_AUTH_STATIC and draft.HasField("static_credential"):
        problems.append(f"{STATIC}: only a server with auth UPSTREAM_AUTH_STATIC takes it")
    if auth != pb.UPSTREAM_AUTH_CLIENT_CREDENTIALS and draft.HasField("client_credentials"):
        problems.append(f"{OAUTH}: only a server with auth UPSTREAM_AUTH_CLIENT_CREDENTIALS takes it")
    parts = AuthParts(None, None, "")
    if auth == pb.UPSTREAM_AUTH_STATIC:
        parts = _static(draft.static_credential, problems)
    elif auth == pb.UPSTREAM_AUTH_CLIENT_CREDENTIALS:
        parts = _oauth(draft.client_credentials, problems)
    if problems:
        raise InvalidArgument("; ".join(problems))
    return parts


def _static(given: pb.StaticCredential, problems: list[str]) -> AuthParts:
    header = given.header.lower()
    if not header:
        problems.append(f"{STATIC}.header: value is required with auth UPSTREAM_AUTH_STATIC")
    elif not _TOKEN.fullmatch(header):
        problems.append(f"{STATIC}.header: not an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
    elif header in RESERVED_HEADERS:
        problems.append(f"{STATIC}.header: {header} is a header the gateway may not be told to send")
    if not given.value:
        problems.append(f"{STATIC}.value: value is required with auth UPSTREAM_AUTH_STATIC")
    elif not _HEADER_VALUE.fullmatch(given.value):
        problems.append(
            f"{STATIC}.value: must be visible ASCII, inner spaces allowed "
            "(no line breaks, control characters or surrounding spaces)"
        )
    return AuthParts(pb.StaticCredential(header=header), None, given.value)


def _oauth(given: pb.OAuthClientCredentials, problems: list[str]) -> AuthParts:
    required = {
        "token_url": given.token_url,
        "client_id": given.client_id,
        "client_secret": given.client_secret,
    }
    for name, value in required.items():
        if not value:
            problems.append(f"{OAUTH}.{name}: value is required with auth UPSTREAM_AUTH_CLIENT_CREDENTIALS")
    if given.scope and not _SCOPE.fullmatch(given.scope):
        problems.append(f"{OAUTH}.scope: scope tokens separated by single spaces (RFC 6749 section 3.3)")
    if given.resource and not _ABSOLUTE_URI.fullmatch(given.resource):
        problems.append(f"{OAUTH}.resource: an absolute URI without a fragment (RFC 8707)")
    stored = pb.OAuthClientCredentials(
        token_url=given.token_url, client_id=given.client_id, scope=given.scope, resource=given.resource
    )
    return AuthParts(None, stored, given.client_secret)
