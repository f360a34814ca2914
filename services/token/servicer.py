"""gRPC surface of the token service: proto in, domain call, proto out."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.context import RpcContext
from services.runtime.protos import timestamp
from services.token import credentials, scopes
from services.token.authorization import client_name
from services.token.claims import TIERS
from services.token.domain import TokenDomain
from services.token.minting import who_of
from services.token.store.directory import Tenant, User

TIER_NAMES = {value: name for name, value in TIERS.items()}
BEARER = "Bearer"


def _tenant(tenant: Tenant) -> pb.Tenant:
    return pb.Tenant(
        tenant_id=tenant.tenant_id,
        tier=TIERS[tenant.tier],
        display_name=tenant.display_name,
        create_time=timestamp(tenant.create_time),
    )


def _user(user: User) -> pb.User:
    return pb.User(
        user_id=user.user_id,
        tenant_id=user.tenant_id,
        username=user.username,
        create_time=timestamp(user.create_time),
        admin=user.admin,
    )


class TokenServicer(pb_grpc.TokenServiceServicer):
    def __init__(self, domain: TokenDomain) -> None:
        self._domain = domain

    async def IssueToken(self, request: pb.IssueTokenRequest, context: RpcContext) -> pb.IssueTokenResponse:
        credentials.body_only(context)
        granted = await self._domain.grants.issue(request)
        return pb.IssueTokenResponse(
            access_token=granted.access.token,
            token_type=BEARER,
            expires_in=granted.access.expires_in,
            refresh_token=granted.refresh_token or "",
            scope=granted.access.scope,
            id_token=granted.id_token or "",
        )

    async def ExchangeToken(
        self, request: pb.ExchangeTokenRequest, context: RpcContext
    ) -> pb.ExchangeTokenResponse:
        credentials.body_only(context)
        exchanged = await self._domain.exchange.exchange(request)
        return pb.ExchangeTokenResponse(
            access_token=exchanged.minted.token,
            issued_token_type=exchanged.issued_token_type,
            token_type=BEARER,
            expires_in=exchanged.minted.expires_in,
            scope=exchanged.minted.scope,
            actor_chain=[actor.message() for actor in exchanged.actors],
        )

    async def IssueAgentToken(
        self, request: pb.IssueAgentTokenRequest, context: RpcContext
    ) -> pb.IssueAgentTokenResponse:
        caller = await self._domain.guard.require(context, scopes.AGENT_TOKEN)
        minted = await self._domain.agent_tokens.issue(caller, request)
        return pb.IssueAgentTokenResponse(
            access_token=minted.token,
            token_type=BEARER,
            expires_in=minted.expires_in,
            expire_time=Timestamp(seconds=minted.claims.exp),
            token_id=minted.claims.jti,
        )

    async def Introspect(self, request: pb.IntrospectRequest, context: RpcContext) -> pb.IntrospectResponse:
        client_id, client_secret = credentials.basic_client(context)
        return await self._domain.introspection.introspect(request.token, client_id, client_secret)

    async def Revoke(self, request: pb.RevokeRequest, context: RpcContext) -> pb.RevokeResponse:
        credentials.body_only(context)
        await self._domain.revocation_requests.revoke(request)
        return pb.RevokeResponse()

    async def RegisterClient(
        self, request: pb.RegisterClientRequest, context: RpcContext
    ) -> pb.RegisterClientResponse:
        credentials.body_only(context)
        registered = await self._domain.registration.register(request)
        return pb.RegisterClientResponse(
            client_id=registered.client.client_id,
            client_secret=registered.client_secret or "",
            client_id_issued_at=int(registered.client.create_time.timestamp()),
            client_secret_expires_at=0,
            metadata=registered.metadata,
        )

    async def GetJwks(self, request: pb.GetJwksRequest, context: RpcContext) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(keys=await self._domain.keys.jwks())

    async def RotateSigningKey(
        self, request: pb.RotateSigningKeyRequest, context: RpcContext
    ) -> pb.RotateSigningKeyResponse:
        caller = await self._domain.guard.require(context, scopes.ADMIN)
        rotation = await self._domain.keys.rotate(who_of(caller.identity))
        response = pb.RotateSigningKeyResponse(
            kid=rotation.current.kid, public_key=rotation.current, previous_kid=rotation.previous_kid or ""
        )
        if rotation.previous_retire_time is not None:
            response.previous_key_retire_time.CopyFrom(timestamp(rotation.previous_retire_time))
        return response

    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: RpcContext
    ) -> pb.CreateTenantResponse:
        caller = await self._domain.guard.require(context, scopes.ADMIN)
        tenant = await self._domain.accounts.create_tenant(
            request.tenant_id, TIER_NAMES[request.tier], request.display_name, who_of(caller.identity)
        )
        return pb.CreateTenantResponse(tenant=_tenant(tenant))

    async def CreateUser(self, request: pb.CreateUserRequest, context: RpcContext) -> pb.CreateUserResponse:
        caller = await self._domain.guard.require(context, scopes.ADMIN)
        user = await self._domain.accounts.create_user(
            request.tenant_id, request.username, request.password, who_of(caller.identity), request.admin
        )
        return pb.CreateUserResponse(user=_user(user))

    async def CheckAuthorization(
        self, request: pb.CheckAuthorizationRequest, context: RpcContext
    ) -> pb.CheckAuthorizationResponse:
        credentials.body_only(context)
        checked = await self._domain.authorization.check(
            request.client_id, request.redirect_uri, request.scope, list(request.resource)
        )
        return pb.CheckAuthorizationResponse(client_name=client_name(checked.client))

    async def Authorize(self, request: pb.AuthorizeRequest, context: RpcContext) -> pb.AuthorizeResponse:
        credentials.body_only(context)
        issued = await self._domain.authorization.authorize(request)
        return pb.AuthorizeResponse(code=issued.code, expires_in=issued.expires_in)

    async def GetUserInfo(
        self, request: pb.GetUserInfoRequest, context: RpcContext
    ) -> pb.GetUserInfoResponse:
        claims = await self._domain.guard.bearer(context)
        info = await self._domain.userinfo.of(claims)
        return pb.GetUserInfoResponse(
            sub=info.sub,
            preferred_username=info.preferred_username,
            tenant_id=info.tenant_id,
            tier=info.tier,
            admin=info.admin,
        )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: RpcContext
    ) -> pb.ListAuditEventsResponse:
        caller = await self._domain.guard.require(context, scopes.AUDIT_READ)
        # The bearer's tenant and no other: the request has no tenant field to name one with.
        return await self._domain.audit_log.list(caller.identity.tenant_id, request)
