"""Every crafted token the verifier must refuse, with the reason it must give.

Each attack is built by hand (tests/auth/forge.py) and names the one check that stops it: the tests
assert that exact reason, so removing that check makes the attack fail differently (or pass) and
its test fail. Shared by the `jwt.verify` suite and the `JwtAuthenticator` suite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.auth.forge import (
    AUDIENCE,
    ISSUER,
    KID,
    OTHER_KID,
    b64,
    claims,
    es256,
    forge,
    header,
    hs256,
    nested_act,
    rs256,
    rsa_jwk,
    segment,
)


@dataclass(frozen=True)
class Keyring:
    signing: rsa.RSAPrivateKey  # published as KID
    other: rsa.RSAPrivateKey  # published as OTHER_KID
    attacker: rsa.RSAPrivateKey  # published nowhere
    now: float


@dataclass(frozen=True)
class Attack:
    name: str
    build: Callable[[Keyring], str]
    reason: str
    detail: str = ""


def _public_bytes(keys: Keyring, encoding: serialization.Encoding, fmt: serialization.PublicFormat) -> bytes:
    return keys.signing.public_key().public_bytes(encoding, fmt)


def _hs256_with_public_key(
    encoding: serialization.Encoding, fmt: serialization.PublicFormat
) -> Callable[[Keyring], str]:
    # The classic key confusion: a verifier that lets the header pick the algorithm uses the RSA
    # public key, which anyone can download from the JWKS, as the HMAC secret.
    return lambda keys: hs256(header(alg="HS256"), claims(keys.now), _public_bytes(keys, encoding, fmt))


def _signed(head: dict[str, object] | None = None, **members: object) -> Callable[[Keyring], str]:
    """A token properly signed by the published key, differing from a valid one only as given."""
    return lambda keys: forge(head or header(), claims(keys.now, **members), keys.signing)


def _tampered(keys: Keyring) -> str:
    genuine = forge(header(), claims(keys.now), keys.signing)
    head, _, signature = genuine.split(".")
    return f"{head}.{segment(claims(keys.now, tenant_id='someone-else'))}.{signature}"


def _bit_flipped(keys: Keyring) -> str:
    genuine = forge(header(), claims(keys.now), keys.signing)
    signing_input = genuine.rpartition(".")[0]
    flipped = bytearray(rs256(keys.signing, signing_input))
    flipped[-1] ^= 1
    return f"{signing_input}.{b64(bytes(flipped))}"


def _with_raw_header(raw: str) -> Callable[[Keyring], str]:
    return lambda keys: forge(b64(raw.encode("utf-8")), claims(keys.now), keys.signing)


def _with_raw_exp(literal: str) -> Callable[[Keyring], str]:
    """Signed by the real key, with `exp` spelled as a literal json.dumps would never write."""

    def build(keys: Keyring) -> str:
        body = json.dumps(claims(keys.now, exp=0)).replace('"exp": 0', f'"exp": {literal}')
        return forge(header(), b64(body.encode("utf-8")), keys.signing)

    return build


def _payload_not_json(keys: Keyring) -> str:
    # Signed by the real key: only the JSON check is left to stop it.
    return forge(header(), b64(b"{not json"), keys.signing)


def _oversized(keys: Keyring) -> str:
    return forge(header(), claims(keys.now, note="x" * 8 * 1024), keys.signing)


def _es256(keys: Keyring) -> str:
    return es256(header(alg="ES256"), claims(keys.now), ec.generate_private_key(ec.SECP256R1()))


_PEM, _DER = serialization.Encoding.PEM, serialization.Encoding.DER
_SPKI, _PKCS1 = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1
_ATTACKER_KID = "attacker-1"

ATTACKS: tuple[Attack, ...] = (
    # --- algorithm ---------------------------------------------------------------------------------
    Attack("alg none", lambda k: forge(header(alg="none"), claims(k.now)), "unsupported_alg"),
    Attack("alg None", lambda k: forge(header(alg="None"), claims(k.now)), "unsupported_alg"),
    Attack(
        "alg none with a real signature attached",
        lambda k: forge(header(alg="none"), claims(k.now), k.signing),
        "unsupported_alg",
    ),
    Attack("alg missing", lambda k: forge(header(alg=None), claims(k.now), k.signing), "unsupported_alg"),
    Attack("alg rs256 lower case", _signed(header(alg="rs256")), "unsupported_alg"),
    Attack("alg PS256", _signed(header(alg="PS256")), "unsupported_alg"),
    Attack(
        "HS256 keyed with the public key as SPKI PEM", _hs256_with_public_key(_PEM, _SPKI), "unsupported_alg"
    ),
    Attack(
        "HS256 keyed with the public key as PKCS1 PEM",
        _hs256_with_public_key(_PEM, _PKCS1),
        "unsupported_alg",
    ),
    Attack("HS256 keyed with the public key as DER", _hs256_with_public_key(_DER, _SPKI), "unsupported_alg"),
    Attack("ES256 when only RS256 is configured", _es256, "unsupported_alg"),
    # --- signature ---------------------------------------------------------------------------------
    Attack("empty signature", lambda k: forge(header(), claims(k.now), signature=""), "missing_signature"),
    Attack(
        "stripped signature",
        lambda k: forge(header(), claims(k.now), k.signing).rpartition(".")[0],
        "missing_signature",
    ),
    Attack("payload changed after signing", _tampered, "bad_signature"),
    Attack("one bit of the signature flipped", _bit_flipped, "bad_signature"),
    Attack(
        "signed by an unknown key under a published kid",
        lambda k: forge(header(KID), claims(k.now), k.attacker),
        "bad_signature",
    ),
    Attack(
        "kid pointing to another published key",
        lambda k: forge(header(OTHER_KID), claims(k.now), k.signing),
        "bad_signature",
    ),
    Attack(
        "signed by an unknown key under its own kid",
        lambda k: forge(header(_ATTACKER_KID), claims(k.now), k.attacker),
        "unknown_kid",
        _ATTACKER_KID,
    ),
    # --- kid ---------------------------------------------------------------------------------------
    Attack("kid with a relative path", _signed(header("../../x")), "invalid_kid"),
    Attack("kid with an absolute path", _signed(header("/dev/null")), "invalid_kid"),
    Attack("kid with a NUL byte", _signed(header("k1\x00.pem")), "invalid_kid"),
    Attack("kid of 65 characters", _signed(header("a" * 65)), "invalid_kid"),
    Attack("kid not a string", _signed({"alg": "RS256", "typ": "at+jwt", "kid": 1}), "invalid_kid"),
    Attack("kid missing", _signed({"alg": "RS256", "typ": "at+jwt"}), "invalid_kid"),
    # --- header members that choose the key or demand extensions ------------------------------------
    Attack(
        "jku naming the attacker's JWKS",
        lambda k: forge(
            header(_ATTACKER_KID, jku="https://evil.example/jwks.json"), claims(k.now), k.attacker
        ),
        "forbidden_header",
        "jku",
    ),
    Attack(
        "x5u naming the attacker's certificate",
        lambda k: forge(
            header(_ATTACKER_KID, x5u="https://evil.example/cert.pem"), claims(k.now), k.attacker
        ),
        "forbidden_header",
        "x5u",
    ),
    Attack(
        "x5c carrying a certificate chain",
        lambda k: forge(header(_ATTACKER_KID, x5c=[b64(b"not really DER")]), claims(k.now), k.attacker),
        "forbidden_header",
        "x5c",
    ),
    Attack(
        "inline jwk of the attacker's key",
        lambda k: forge(header(KID, jwk=rsa_jwk(k.attacker.public_key(), KID)), claims(k.now), k.attacker),
        "forbidden_header",
        "jwk",
    ),
    Attack("crit extension", _signed(header(crit=["exp"], exp=0)), "forbidden_header", "crit"),
    Attack("unexpected header member", _signed(header(cty="JWT")), "unexpected_header", "cty"),
    # --- typ -----------------------------------------------------------------------------------------
    Attack("typ JWT", _signed(header(typ="JWT")), "invalid_typ"),
    Attack("typ missing", _signed(header(typ=None)), "invalid_typ"),
    Attack("typ of an ID token", _signed(header(typ="id_token+jwt")), "invalid_typ"),
    # --- lifetime ------------------------------------------------------------------------------------
    Attack(
        "expired beyond the leeway",
        lambda k: forge(header(), claims(k.now - 631), k.signing),  # exp = now - 31
        "expired",
    ),
    Attack(
        "not valid before a time beyond the leeway",
        lambda k: forge(header(), claims(k.now, nbf=int(k.now) + 31), k.signing),
        "not_yet_valid",
        "nbf",
    ),
    Attack(
        "issued in the future beyond the leeway",
        lambda k: forge(header(), claims(k.now, iat=int(k.now) + 31, nbf=None), k.signing),
        "not_yet_valid",
        "iat",
    ),
    Attack("exp not a number", _signed(exp="tomorrow"), "invalid_claim", "exp"),
    Attack("exp a boolean", _signed(exp=True), "invalid_claim", "exp"),
    Attack(
        "exp NaN, which never compares as expired",
        _with_raw_exp("NaN"),
        "malformed",
        "payload is not a JSON object",
    ),
    Attack("exp Infinity", _with_raw_exp("Infinity"), "malformed", "payload is not a JSON object"),
    # Refused as it is parsed: orjson does not turn 1e400 into an infinite float.
    Attack("exp too large for a float", _with_raw_exp("1e400"), "malformed", "payload is not a JSON object"),
    # --- issuer and audience -------------------------------------------------------------------------
    Attack("wrong issuer", _signed(iss="https://evil.example"), "wrong_issuer"),
    Attack("issuer differing by a slash", _signed(iss=ISSUER + "/"), "wrong_issuer"),
    Attack("token for another service", _signed(aud="urn:macp:service:metering"), "wrong_audience"),
    Attack(
        "audience list without this service",
        _signed(aud=["urn:macp:edge", "urn:macp:service:token"]),
        "wrong_audience",
    ),
    Attack("audience a prefix of ours", _signed(aud=AUDIENCE[:-1]), "wrong_audience"),
    Attack("audience an empty list", _signed(aud=[]), "invalid_claim", "aud"),
    # --- required claims -----------------------------------------------------------------------------
    *(
        Attack(f"{name} missing", _signed(**{name: None}), "missing_claim", name)
        for name in ("exp", "iat", "jti", "sub", "iss", "aud")
    ),
    Attack("jti empty", _signed(jti=""), "invalid_claim", "jti"),
    Attack("jti longer than a revocation key allows", _signed(jti="j" * 129), "invalid_claim", "jti"),
    Attack("tier unknown", _signed(tier="platinum"), "invalid_claim", "tier"),
    # --- delegation ----------------------------------------------------------------------------------
    Attack("delegation deeper than allowed", _signed(act=nested_act(3)), "delegation_too_deep"),
    Attack("act not an object", _signed(act="admin"), "invalid_claim", "act"),
    # --- size and encoding ---------------------------------------------------------------------------
    Attack("oversized", _oversized, "oversized"),
    Attack(
        "header with base64 padding",
        lambda k: forge("eyJhbGciOiJSUzI1NiJ9=", claims(k.now), k.signing),
        "malformed",
        "not a JWS compact serialization",
    ),
    Attack(
        "header of an impossible length",
        lambda k: forge("eyJhb", claims(k.now), k.signing),
        "malformed",
        "header is not base64url",
    ),
    Attack("header not JSON", _with_raw_header("alg=RS256"), "malformed", "header is not a JSON object"),
    Attack("header a JSON array", _with_raw_header('["RS256"]'), "malformed", "header is not a JSON object"),
    Attack(
        "header not UTF-8",
        lambda k: forge(b64(b'{"alg":"RS256\xff"}'), claims(k.now), k.signing),
        "malformed",
        "header is not a JSON object",
    ),
    Attack(
        "header with a duplicate alg",
        _with_raw_header(f'{{"alg":"none","typ":"at+jwt","kid":"{KID}","alg":"RS256"}}'),
        "malformed",
        "header is not a JSON object",
    ),
    Attack(
        "header nested past the parser's limits",
        _with_raw_header("[" * 1500 + "]" * 1500),
        "malformed",
        "header is not a JSON object",
    ),
    Attack("payload not JSON", _payload_not_json, "malformed", "payload is not a JSON object"),
    Attack(
        "four segments",
        lambda k: forge(header(), claims(k.now), k.signing) + ".e30",
        "malformed",
        "not a JWS compact serialization",
    ),
    Attack(
        "signature with a character outside base64url",
        lambda k: forge(header(), claims(k.now), k.signing) + "+",
        "malformed",
        "not a JWS compact serialization",
    ),
)


def keyring(signing: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey, attacker: rsa.RSAPrivateKey) -> Keyring:
    return Keyring(signing=signing, other=other, attacker=attacker, now=time.time())
