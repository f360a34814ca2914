"""`jwt.sign`, `jwt.verify` on valid tokens, and the JWK helpers: the format both sides share."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.runtime.auth.jwt import (
    ActorClaim,
    InvalidToken,
    jwk_from_public_key,
    public_key_from_jwk,
    sign,
    verify,
)
from tests.auth.forge import AUDIENCE, ISSUER, KID, claims, forge, header, nested_act, rsa_jwk


def decoded(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def test_sign_writes_exactly_the_contract_header_and_the_claims(signing_key: rsa.RSAPrivateKey) -> None:
    payload = claims()
    token = sign(payload, private_key=signing_key, kid=KID)
    head, body, _ = token.split(".")
    assert decoded(head) == {"alg": "RS256", "typ": "at+jwt", "kid": KID}
    assert decoded(body) == payload
    assert "=" not in token
    # RS256 PKCS#1 v1.5 is deterministic: the hand-built token is the same bytes.
    assert token == forge(header(), payload, signing_key)


def test_sign_refuses_a_kid_verifiers_would_refuse(signing_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="kid"):
        sign(claims(), private_key=signing_key, kid="../keys/k1")


def test_sign_refuses_to_make_a_token_verifiers_would_refuse_as_oversized(
    signing_key: rsa.RSAPrivateKey,
) -> None:
    with pytest.raises(ValueError, match="limit"):
        sign(claims(padding="x" * 8192), private_key=signing_key, kid=KID)


def test_a_valid_token_yields_every_claim(signing_key: rsa.RSAPrivateKey, keys: dict[str, Any]) -> None:
    now = time.time()
    payload = claims(
        now,
        aud=["urn:macp:service:orchestrator", AUDIENCE],
        act={"sub": "agent-sub", "client_id": "orchestrator", "agent_id": "a-1", "act": {"sub": "svc"}},
        agent_id="a-9",
        owner_id="user-1",
        capabilities=["search", "code"],
    )
    result = verify(forge(header(), payload, signing_key), keys=keys, issuer=ISSUER, audience=AUDIENCE)
    assert result.iss == ISSUER
    assert result.sub == "user-1"
    assert result.aud == ("urn:macp:service:orchestrator", AUDIENCE)
    assert (result.exp, result.iat, result.nbf) == (payload["exp"], payload["iat"], payload["nbf"])
    assert result.jti == payload["jti"]
    assert result.client_id == "web-app"
    assert result.client_class == "consumer"
    assert result.scopes == ("conversation:read", "conversation:write")
    assert (result.tenant_id, result.tier, result.user_id) == ("acme", "pro", "user-1")
    assert result.actor_chain == (
        ActorClaim(sub="agent-sub", client_id="orchestrator", agent_id="a-1"),
        ActorClaim(sub="svc"),
    )
    assert (result.agent_id, result.owner_id, result.capabilities) == ("a-9", "user-1", ("search", "code"))
    assert dict(result.raw) == payload


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_rfc_9068_typ_spellings_are_accepted(
    typ: str, signing_key: rsa.RSAPrivateKey, keys: dict[str, Any]
) -> None:
    token = forge(header(typ=typ), claims(), signing_key)
    assert verify(token, keys=keys, issuer=ISSUER, audience=AUDIENCE).sub == "user-1"


def test_leeway_tolerates_small_clock_skew(signing_key: rsa.RSAPrivateKey, keys: dict[str, Any]) -> None:
    now = time.time()
    expired_a_moment_ago = forge(header(), claims(now - 610), signing_key)  # exp = now - 10
    from_the_near_future = forge(header(), claims(now + 10), signing_key)  # iat = nbf = now + 10
    for token in (expired_a_moment_ago, from_the_near_future):
        verify(token, keys=keys, issuer=ISSUER, audience=AUDIENCE, now=now, leeway=30)
    with pytest.raises(InvalidToken, match="expired"):
        verify(expired_a_moment_ago, keys=keys, issuer=ISSUER, audience=AUDIENCE, now=now, leeway=0)


def test_delegation_up_to_the_maximum_depth_is_accepted(
    signing_key: rsa.RSAPrivateKey, keys: dict[str, Any]
) -> None:
    token = forge(header(), claims(act=nested_act(2)), signing_key)
    result = verify(token, keys=keys, issuer=ISSUER, audience=AUDIENCE, max_delegation_depth=2)
    assert [actor.sub for actor in result.actor_chain] == ["actor-1", "actor-2"]


def test_jwk_round_trip(signing_key: rsa.RSAPrivateKey) -> None:
    public = signing_key.public_key()
    jwk = jwk_from_public_key(public, KID)
    assert jwk == rsa_jwk(public, KID)
    assert public_key_from_jwk(jwk).public_numbers() == public.public_numbers()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kty": "EC"}, "kty"),
        ({"alg": "HS256"}, "alg"),
        ({"use": "enc"}, "use"),
        ({"n": None}, "n is missing"),
        ({"e": "!!"}, "e is not base64url"),
    ],
)
def test_public_key_from_jwk_refuses_anything_but_an_rs256_signing_key(
    signing_key: rsa.RSAPrivateKey, change: dict[str, Any], message: str
) -> None:
    jwk: dict[str, Any] = {**rsa_jwk(signing_key.public_key(), KID), **change}
    with pytest.raises(ValueError, match=message):
        public_key_from_jwk({name: value for name, value in jwk.items() if value is not None})


def test_public_key_from_jwk_refuses_short_rsa_keys() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="at least 2048"):
        public_key_from_jwk(rsa_jwk(weak.public_key(), KID))
