"""A user's token for one service, got the way the edge gets it: the user signs in for the edge
through a consumer client, and an internal client exchanges that token (RFC 8693) for the
service's audience. A user's sign-in never gets a service audience, and only internal clients hold
the service-held scopes (`agents:generate`, `usage:write`), so a bench that calls a service
directly takes this path too.
"""

from __future__ import annotations

from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from services.token.scopes import SERVICE_HELD

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


async def service_token(
    stub: token_grpc.TokenServiceStub,
    initial_access_token: str,
    tenant_id: str,
    username: str,
    password: str,
    service: str,
    scope: str,
) -> str:
    """`username`'s token for `service` carrying `scope` (service-held scopes included)."""
    asked = scope.split()
    user_scope = " ".join(name for name in asked if name not in SERVICE_HELD)
    signing_in = await _register(
        stub, initial_access_token, tenant_id, principal_pb2.CLIENT_CLASS_CONSUMER, ["password"], user_scope
    )
    exchanger = await _register(
        stub, initial_access_token, tenant_id, principal_pb2.CLIENT_CLASS_INTERNAL, [EXCHANGE_GRANT], scope
    )
    signed_in = await stub.IssueToken(
        token_pb.IssueTokenRequest(
            grant_type=token_pb.GRANT_TYPE_PASSWORD,
            client_id=signing_in.client_id,
            client_secret=signing_in.client_secret,
            username=username,
            password=password,
            audience=[EDGE_AUDIENCE],
            scope=user_scope,
        ),
        timeout=10,
    )
    exchanged = await stub.ExchangeToken(
        token_pb.ExchangeTokenRequest(
            client_id=exchanger.client_id,
            client_secret=exchanger.client_secret,
            subject_token=signed_in.access_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
            audience=[service_audience(service)],
            scope=scope,
        ),
        timeout=10,
    )
    token: str = exchanged.access_token
    return token


async def _register(
    stub: token_grpc.TokenServiceStub,
    initial_access_token: str,
    tenant_id: str,
    client_class: principal_pb2.ClientClass.ValueType,
    grant_types: list[str],
    scope: str,
) -> token_pb.RegisterClientResponse:
    response: token_pb.RegisterClientResponse = await stub.RegisterClient(
        token_pb.RegisterClientRequest(
            initial_access_token=initial_access_token,
            tenant_id=tenant_id,
            metadata=token_pb.ClientMetadata(
                client_name="bench", client_class=client_class, grant_types=grant_types, scope=scope
            ),
        ),
        timeout=10,
    )
    return response
