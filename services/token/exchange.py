"""RFC 8693 token exchange with delegation semantics.

The subject token names on whose behalf (usually a user); the actor token, who acts (usually an
agent). The new token keeps the subject's identity, puts the actor on top of the subject's `act`
chain, and may only narrow: its scopes are within the subject's, the actor's and the exchanging
client's, privileged scopes never pass, it lives no longer than either input token, and both inputs
must belong to one tenant. A chain longer than the maximum delegation depth is refused.
One exception to "only narrow": an internal client adds the service-held scopes it holds
(`scopes.SERVICE_HELD`: generating and metering on the user's behalf), which users never hold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.token import audiences, scopes
from services.token.claims import AccessClaims, Actor, Identity
from services.token.clients import TOKEN_EXCHANGE, Clients
from services.token.minting import Audit, Minted, Minter
from services.token.oauth import oauth_error
from services.token.revocation_records import EXCHANGED_FROM_REVOKED, RevocationRecords
from services.token.store.tokens import Revocation
from services.token.verification import TokenVerifier

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class Exchanged:
    minted: Minted
    issued_token_type: str
    actors: tuple[Actor, ...]


class TokenExchange:
    def __init__(
        self,
        clients: Clients,
        verifier: TokenVerifier,
        minter: Minter,
        revocations: RevocationRecords,
        *,
        max_delegation_depth: int,
        access_token_seconds: int,
        public_resources: frozenset[str] = frozenset(),
    ) -> None:
        self._clients = clients
        self._verifier = verifier
        self._minter = minter
        self._revocations = revocations
        self._max_depth = max_delegation_depth
        self._lifetime = access_token_seconds
        self._public = public_resources

    async def exchange(self, request: pb.ExchangeTokenRequest) -> Exchanged:
        client = await self._clients.authenticate_for(
            request.client_id, request.client_secret, TOKEN_EXCHANGE
        )
        subject = await self._verifier.check_subject(request.subject_token)
        if subject is None:
            raise oauth_error("invalid_request", "subject_token is not a valid, unexpired, unrevoked token")
        actor = await self._input(request.actor_token, "actor_token") if request.actor_token else None
        tenant_id = subject.identity.tenant_id
        if actor is not None and actor.identity.tenant_id != tenant_id and not _mesh_service(actor.identity):
            raise oauth_error("access_denied", "the subject and the actor belong to different tenants")
        if client.client_class != "internal" and client.tenant_id != tenant_id:
            raise oauth_error("access_denied", "the client and the subject belong to different tenants")

        chain = subject.identity.actors
        if actor is not None:
            chain = (actor.identity.as_actor(), *chain)
        if len(chain) > self._max_depth:
            raise oauth_error(
                "access_denied",
                f"delegation depth {len(chain)} exceeds the maximum of {self._max_depth}",
            )

        limits = [subject.scopes, client.scopes] + ([actor.scopes] if actor is not None else [])
        allowed = scopes.for_class(client.client_class, scopes.unprivileged(scopes.intersection(*limits)))
        extra = scopes.service_held(client.client_class, client.scopes, actor.scopes if actor else None)
        allowed = (*allowed, *(scope for scope in extra if scope not in allowed))
        granted = scopes.narrow(scopes.parse(request.scope), allowed)
        targets = audiences.resolve(request.audience, request.resource, outside=True, public=self._public)
        audiences.check_holder(
            targets, client_class=client.client_class, user_sign_in=False, public=self._public
        )
        identity = dataclasses.replace(
            subject.identity, client_id=client.client_id, client_class=client.client_class, actors=chain
        )
        not_after = min(subject.exp, actor.exp) if actor is not None else subject.exp
        minted = await self._minter.mint(
            identity,
            audiences=targets,
            scopes=granted,
            lifetime_seconds=self._lifetime,
            audit=Audit(
                audit.TOKEN_EXCHANGE,
                {
                    "subject_token_id": subject.jti,
                    "actor_token_id": actor.jti if actor is not None else "",
                },
            ),
            not_after=not_after,
            exchanged_from=(subject.jti, actor.jti if actor is not None else None),
        )
        await self._unless_inputs_revoked(minted, subject, actor)
        return Exchanged(minted, request.requested_token_type or ACCESS_TOKEN_TYPE, chain)

    async def _unless_inputs_revoked(
        self, minted: Minted, subject: AccessClaims, actor: AccessClaims | None
    ) -> None:
        """An input revoked while this exchange ran may have missed the new token in its cascade
        (it looked before the token was recorded): then the new token is revoked here instead."""
        inputs = [subject.jti] + ([actor.jti] if actor is not None else [])
        if await self._revocations.any_revoked_durably(inputs):
            expire_time = datetime.fromtimestamp(minted.claims.exp, UTC)
            await self._revocations.revoke(
                [Revocation(minted.claims.jti, expire_time)], EXCHANGED_FROM_REVOKED, None
            )
            raise oauth_error("invalid_request", "subject_token or actor_token was revoked")

    async def _input(self, token: str, name: str) -> AccessClaims:
        claims = await self._verifier.check(token)
        if claims is None:
            # RFC 8693 2.2.2: an invalid subject or actor token is invalid_request.
            raise oauth_error("invalid_request", f"{name} is not a valid, unexpired, unrevoked token")
        return claims


def _mesh_service(identity: Identity) -> bool:
    """An actor that is one of MACP's own services acting on its own behalf (an internal client's
    client-credentials token, no user): it acts for users of every tenant, as the edge and the tool
    gateway do, so its tenant need not be the subject's. It only adds itself to `act`; the token
    stays the subject's, in the subject's tenant."""
    return (
        identity.client_class == "internal"
        and identity.user_id is None
        and identity.sub == identity.client_id
    )
