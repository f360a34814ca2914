"""The claims of a MACP access token (RFC 9068 plus MACP's), as one typed value, both ways.

`to_jwt` writes the JSON object that is signed; `from_jwt` reads one back (after the runtime's
`jwt.verify` has checked it) and insists on what every token of ours carries: tenant, tier, client
class. The principal derived here matches `services.runtime.auth.authenticator.principal_from_claims`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import principal_pb2

TIERS = {
    "free": principal_pb2.TIER_FREE,
    "pro": principal_pb2.TIER_PRO,
    "enterprise": principal_pb2.TIER_ENTERPRISE,
}
CLIENT_CLASSES = {
    "internal": principal_pb2.CLIENT_CLASS_INTERNAL,
    "consumer": principal_pb2.CLIENT_CLASS_CONSUMER,
    "partner": principal_pb2.CLIENT_CLASS_PARTNER,
    "third_party": principal_pb2.CLIENT_CLASS_THIRD_PARTY,
}
# An `act` nested deeper than this is refused outright, whatever the delegation policy says.
MAX_ACT_NESTING = 8


class MalformedToken(ValueError):
    """Signed by us, yet not the claims MACP issues (a missing tenant, an unknown tier, ...)."""


@dataclass(frozen=True)
class Actor:
    """One level of the RFC 8693 `act` claim: `{"sub", "client_id", "agent_id"?}`."""

    sub: str
    client_id: str
    agent_id: str | None = None

    @property
    def actor_type(self) -> principal_pb2.ActorType.ValueType:
        if self.agent_id is not None:
            return principal_pb2.ACTOR_TYPE_AGENT
        if self.sub == self.client_id:
            return principal_pb2.ACTOR_TYPE_CLIENT
        return principal_pb2.ACTOR_TYPE_USER

    def message(self) -> principal_pb2.Actor:
        return principal_pb2.Actor(type=self.actor_type, id=self.sub, client_id=self.client_id)


@dataclass(frozen=True)
class Identity:
    """Whom a token stands for, apart from where and how long it is valid.

    actors: the delegation chain, most recent first (`act`, then `act.act`, ...).
    agent_id, owner_id, capabilities: set on agent tokens only.
    """

    sub: str
    client_id: str
    client_class: str
    tenant_id: str
    tier: str
    user_id: str | None = None
    actors: tuple[Actor, ...] = ()
    agent_id: str | None = None
    owner_id: str | None = None
    capabilities: tuple[str, ...] | None = None

    def as_actor(self) -> Actor:
        """This token's holder, as the actor of a token exchanged with it."""
        return Actor(sub=self.sub, client_id=self.client_id, agent_id=self.agent_id)


@dataclass(frozen=True)
class AccessClaims:
    iss: str
    aud: tuple[str, ...]
    exp: int
    iat: int
    nbf: int
    jti: str
    scopes: tuple[str, ...]
    identity: Identity

    def to_jwt(self) -> dict[str, Any]:
        who = self.identity
        claims: dict[str, Any] = {
            "iss": self.iss,
            "sub": who.sub,
            "aud": self.aud[0] if len(self.aud) == 1 else list(self.aud),
            "exp": self.exp,
            "iat": self.iat,
            "nbf": self.nbf,
            "jti": self.jti,
            "client_id": who.client_id,
            "client_class": who.client_class,
            "scope": " ".join(self.scopes),
            "tenant_id": who.tenant_id,
            "tier": who.tier,
        }
        if who.user_id is not None:
            claims["user_id"] = who.user_id
        if who.actors:
            claims["act"] = _act_claim(who.actors)
        if who.agent_id is not None:
            claims["agent_id"] = who.agent_id
            claims["owner_id"] = who.owner_id
            claims["capabilities"] = list(who.capabilities or ())
        return claims

    @classmethod
    def from_jwt(cls, claims: dict[str, Any]) -> AccessClaims:
        agent_id = _optional_str(claims, "agent_id")
        tier = _str(claims, "tier")
        client_class = _str(claims, "client_class")
        if tier not in TIERS:
            raise MalformedToken(f"tier {tier!r} is unknown")
        if client_class not in CLIENT_CLASSES:
            raise MalformedToken(f"client_class {client_class!r} is unknown")
        identity = Identity(
            sub=_str(claims, "sub"),
            client_id=_str(claims, "client_id"),
            client_class=client_class,
            tenant_id=_str(claims, "tenant_id"),
            tier=tier,
            user_id=_optional_str(claims, "user_id"),
            actors=_actors(claims.get("act"), 0),
            agent_id=agent_id,
            owner_id=_str(claims, "owner_id") if agent_id is not None else None,
            capabilities=_str_list(claims, "capabilities") if agent_id is not None else None,
        )
        return cls(
            iss=_str(claims, "iss"),
            aud=_audiences(claims.get("aud")),
            exp=_int(claims, "exp"),
            iat=_int(claims, "iat"),
            nbf=_int(claims, "nbf"),
            jti=_str(claims, "jti"),
            scopes=tuple(_str(claims, "scope", allow_empty=True).split()),
            identity=identity,
        )

    def principal(self) -> principal_pb2.Principal:
        who = self.identity
        return principal_pb2.Principal(
            tenant_id=who.tenant_id,
            user_id=who.user_id or "",
            tier=TIERS[who.tier],
            scopes=list(self.scopes),
            client_id=who.client_id,
            client_class=CLIENT_CLASSES[who.client_class],
            actor_chain=[actor.message() for actor in who.actors],
            token_id=self.jti,
            expire_time=Timestamp(seconds=self.exp),
        )


def _act_claim(actors: tuple[Actor, ...]) -> dict[str, Any]:
    head, *rest = actors
    act: dict[str, Any] = {"sub": head.sub, "client_id": head.client_id}
    if head.agent_id is not None:
        act["agent_id"] = head.agent_id
    if rest:
        act["act"] = _act_claim(tuple(rest))
    return act


def _actors(value: Any, depth: int) -> tuple[Actor, ...]:
    if value is None:
        return ()
    if depth >= MAX_ACT_NESTING:
        raise MalformedToken(f"act is nested deeper than {MAX_ACT_NESTING}")
    if not isinstance(value, dict) or not set(value) <= {"sub", "client_id", "agent_id", "act"}:
        raise MalformedToken("act is not {sub, client_id, agent_id?, act?}")
    actor = Actor(
        sub=_str(value, "sub"), client_id=_str(value, "client_id"), agent_id=_optional_str(value, "agent_id")
    )
    return (actor, *_actors(value.get("act"), depth + 1))


def _str(claims: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or (value == "" and not allow_empty):
        raise MalformedToken(f"claim {name} is missing or not a string")
    return value


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    return None if claims.get(name) is None else _str(claims, name)


def _int(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedToken(f"claim {name} is missing or not an integer")
    return value


def _str_list(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedToken(f"claim {name} is not a list of strings")
    return tuple(value)


def _audiences(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    raise MalformedToken("claim aud is missing or not a string or list of strings")
