"""Open dynamic client registration (RFC 7591 without an initial access token), for MCP clients.

An MCP client meets the tool gateway's `/mcp` with no prior relationship: it discovers the token
service from the 401 and registers itself. Anyone may do that, so what anyone can get is kept as
small as it can be:
- only a tenant that opted in (`MACP_TOKEN_OPEN_REGISTRATION_TENANTS`) gets such clients: its tool
  catalogue is then callable by any registered client, which is the point of opting in (a tenant
  that publishes tools); no other tenant's data is reachable, since a client-credentials token
  acts in its client's tenant only;
- the client is THIRD_PARTY (the lowest rate limits and no privileged or service-held scope);
- its one grant is client_credentials (authorization_code comes with the authorization endpoint),
  so it is confidential: its secret is returned once, only its hash kept;
- its scopes are at most `tools:read tools:call` (the MCP endpoint's), both when it asks for none.
The tenant is the one the registration names (`tenant_id`, MACP's extension), or, when exactly one
tenant opted in, that one, so a standard MCP client that sends only RFC 7591 metadata registers
there. Requests without a token are limited per source address at the edge (services/edge/
source_limits.py), and every registration is audited with `open-registration` as its subject.
"""

from __future__ import annotations

from typing import NoReturn

from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from services.runtime.auth.settings import MCP_SCOPES
from services.token import scopes
from services.token.clients import CLIENT_CREDENTIALS
from services.token.oauth import oauth_error

OPEN_REGISTRATION_SUBJECT = "open-registration"
OPEN_GRANTS = (CLIENT_CREDENTIALS,)


def _refuse(description: str) -> NoReturn:
    raise oauth_error("invalid_client_metadata", description)


def open_tenant(requested: str, tenants: tuple[str, ...]) -> str:
    """The tenant an open registration lands in (see the module docstring)."""
    if requested:
        if requested not in tenants:
            _refuse(f"tenant_id: tenant {requested} does not take open registrations")
        return requested
    if len(tenants) == 1:
        return tenants[0]
    _refuse(f"tenant_id: name the tenant to register with, one of {', '.join(tenants)}")


def open_metadata(requested: pb.ClientMetadata) -> pb.ClientMetadata:
    """The metadata an open registration gets: the request's, checked against the module
    docstring's limits, its omissions filled (client_credentials, both MCP scopes)."""
    metadata = pb.ClientMetadata()
    metadata.CopyFrom(requested)
    if metadata.client_class not in (
        principal_pb2.CLIENT_CLASS_UNSPECIFIED,
        principal_pb2.CLIENT_CLASS_THIRD_PARTY,
    ):
        _refuse("client_class: a client registered without an initial access token is a third party")
    metadata.client_class = principal_pb2.CLIENT_CLASS_THIRD_PARTY
    grants = list(metadata.grant_types) or list(OPEN_GRANTS)
    others = [grant for grant in grants if grant not in OPEN_GRANTS]
    if others:
        _refuse(
            f"grant_types: a client registered without an initial access token may use "
            f"{' '.join(OPEN_GRANTS)} only, not {' '.join(others)}"
        )
    del metadata.grant_types[:]
    metadata.grant_types.extend(grants)
    # No grant of its needs a response type; an MCP client sends ["code"] by habit (RFC 7591 3.2.1
    # lets the server replace what it will not honour).
    del metadata.response_types[:]
    if metadata.redirect_uris:
        _refuse("redirect_uris: a client_credentials client is redirected nowhere; leave them out")
    if not metadata.token_endpoint_auth_method:
        metadata.token_endpoint_auth_method = "client_secret_basic"
    wanted = scopes.parse(metadata.scope) or MCP_SCOPES
    excess = [scope for scope in wanted if scope not in MCP_SCOPES]
    if excess:
        _refuse(
            f"scope: a client registered without an initial access token may hold "
            f"{' '.join(MCP_SCOPES)} at most, not {' '.join(excess)}"
        )
    metadata.scope = " ".join(wanted)
    return metadata
