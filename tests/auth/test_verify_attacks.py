"""The attack suite against `jwt.verify`: each crafted token is refused, for the reason it names."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.runtime.auth.jwt import InvalidToken, verify
from tests.auth.attacks import ATTACKS, Attack, keyring
from tests.auth.forge import AUDIENCE, ISSUER, claims, forge, header


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
def test_verify_refuses(
    attack: Attack,
    signing_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    attacker_key: rsa.RSAPrivateKey,
    keys: dict[str, rsa.RSAPublicKey],
) -> None:
    ring = keyring(signing_key, other_key, attacker_key)
    token = attack.build(ring)
    with pytest.raises(InvalidToken) as refused:
        verify(token, keys=keys, issuer=ISSUER, audience=AUDIENCE, now=ring.now)
    assert (refused.value.reason, refused.value.detail) == (attack.reason, attack.detail)
    assert token not in str(refused.value)


def test_the_same_claims_properly_signed_are_accepted(
    signing_key: rsa.RSAPrivateKey, keys: dict[str, rsa.RSAPublicKey]
) -> None:
    """The control for the suite: what the attacks vary is what gets them refused."""
    token = forge(header(), claims(), signing_key)
    assert verify(token, keys=keys, issuer=ISSUER, audience=AUDIENCE).tenant_id == "acme"


def test_a_smaller_delegation_limit_is_enforced(
    signing_key: rsa.RSAPrivateKey, keys: dict[str, rsa.RSAPublicKey]
) -> None:
    delegated = forge(header(), claims(act={"sub": "agent", "client_id": "orchestrator"}), signing_key)
    verify(delegated, keys=keys, issuer=ISSUER, audience=AUDIENCE, max_delegation_depth=1)
    with pytest.raises(InvalidToken, match="delegation_too_deep"):
        verify(delegated, keys=keys, issuer=ISSUER, audience=AUDIENCE, max_delegation_depth=0)


def test_a_token_just_under_the_size_limit_is_accepted(
    signing_key: rsa.RSAPrivateKey, keys: dict[str, rsa.RSAPublicKey]
) -> None:
    base = len(forge(header(), claims(note=""), signing_key))
    # base64 turns 3 bytes into 4 characters: this fills the token to within a few of 8 KiB.
    token = forge(header(), claims(note="x" * ((8192 - base) * 3 // 4 - 3)), signing_key)
    assert 8180 < len(token) <= 8192
    verify(token, keys=keys, issuer=ISSUER, audience=AUDIENCE)
