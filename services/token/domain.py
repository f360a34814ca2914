"""The token service's parts, built once from its resources and settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from services.runtime.auth.external import ExternalIssuers
from services.runtime.auth.jwks import DEFAULT_REFRESH_SECONDS
from services.runtime.sealing import Sealer
from services.token.accounts import Accounts
from services.token.agent_tokens import AgentTokens
from services.token.audit_log import AuditLog
from services.token.authorization import Authorization
from services.token.clients import Clients
from services.token.console import ensure_console_client
from services.token.exchange import TokenExchange
from services.token.grants import Grants
from services.token.guard import BearerGuard
from services.token.guessing import Guessing
from services.token.id_tokens import IdTokens
from services.token.introspection import Introspection
from services.token.minting import Minter
from services.token.registration import Registration
from services.token.revocation_records import RevocationRecords
from services.token.revocation_requests import RevocationRequests
from services.token.settings import TokenSettings
from services.token.sign_in import SignIn
from services.token.signing import SigningKeys
from services.token.store.codes import CodeStore
from services.token.store.directory import DirectoryStore
from services.token.store.keys import KeyStore
from services.token.store.tokens import TokenStore
from services.token.userinfo import UserInfoLookup
from services.token.verification import TokenVerifier

log = logging.getLogger("macp.token")


@dataclass(frozen=True)
class TokenDomain:
    grants: Grants
    exchange: TokenExchange
    agent_tokens: AgentTokens
    introspection: Introspection
    revocation_requests: RevocationRequests
    registration: Registration
    keys: SigningKeys
    accounts: Accounts
    guard: BearerGuard
    external_issuers: ExternalIssuers
    audit_log: AuditLog
    authorization: Authorization
    userinfo: UserInfoLookup

    @classmethod
    async def start(
        cls, settings: TokenSettings, pool: asyncpg.Pool, redis: aioredis.Redis, redis_key_prefix: str
    ) -> TokenDomain:
        """Build the parts; make the first signing key if there is none; refill Redis's revocations;
        register the console's client (console.py)."""
        directory, tokens = DirectoryStore(pool), TokenStore(pool)
        keys = SigningKeys(
            KeyStore(pool),
            Sealer(settings.key_encryption_key),
            retire_after_seconds=settings.max_token_seconds,
        )
        await keys.start()
        revocations = RevocationRecords(redis, redis_key_prefix, tokens)
        republished = await revocations.republish()
        console_changed = await ensure_console_client(directory, settings.issuer)
        log.info(
            "token service ready",
            extra={"revocations_republished": republished, "console_client_changed": console_changed},
        )

        guessing = Guessing(redis, redis_key_prefix, settings.guessing, pool)
        clients = Clients(directory, guessing)
        external_issuers = ExternalIssuers(settings.external_issuers, refresh_seconds=DEFAULT_REFRESH_SECONDS)
        await external_issuers.start()
        verifier = TokenVerifier(
            keys, revocations, settings.issuer, settings.max_delegation_depth, external_issuers
        )
        minter = Minter(keys, tokens, settings.issuer)
        sign_in = SignIn(directory, guessing)
        authorization = Authorization(directory, CodeStore(pool), sign_in, settings)
        return cls(
            grants=Grants(
                clients,
                directory,
                tokens,
                minter,
                revocations,
                sign_in,
                authorization,
                IdTokens(keys, settings.issuer),
                settings,
            ),
            exchange=TokenExchange(
                clients,
                verifier,
                minter,
                revocations,
                max_delegation_depth=settings.max_delegation_depth,
                access_token_seconds=settings.access_token_seconds,
                public_resources=settings.public_resources,
            ),
            agent_tokens=AgentTokens(directory, clients, minter),
            introspection=Introspection(clients, verifier, tokens, directory, settings.issuer),
            revocation_requests=RevocationRequests(clients, directory, verifier, tokens, revocations),
            registration=Registration(directory, settings.initial_access_token, settings.open_registration),
            keys=keys,
            accounts=Accounts(directory),
            guard=BearerGuard(verifier),
            external_issuers=external_issuers,
            audit_log=AuditLog(pool),
            authorization=authorization,
            userinfo=UserInfoLookup(directory),
        )

    async def stop(self) -> None:
        await self.external_issuers.stop()
