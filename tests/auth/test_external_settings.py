"""`MACP_AUTH_EXTERNAL_ISSUERS`: what an operator writes, and the one line each mistake gets."""

from __future__ import annotations

import json

import pytest

from services.runtime.auth.external import ExternalIssuer, external_issuers_from_env
from services.runtime.settings import Env, SettingsError

COGNITO = {
    "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC",
    "jwks_uri": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC/.well-known/jwks.json",
    "audiences": ["5n3hm1s2example"],
}


def _parse(value: object) -> tuple[ExternalIssuer, ...]:
    text = value if isinstance(value, str) else json.dumps(value)
    return external_issuers_from_env(Env({"MACP_AUTH_EXTERNAL_ISSUERS": text}))


def test_unset_means_no_outside_issuer() -> None:
    assert external_issuers_from_env(Env({})) == ()


def test_an_entry_takes_the_cognito_claim_names_by_default() -> None:
    (issuer,) = _parse([COGNITO])
    assert issuer.tenant_claim == "custom:organizationId"
    assert issuer.tier_claim == "custom:tier"
    assert issuer.default_tier is None
    assert issuer.scopes == ()
    assert issuer.client_class == "consumer"


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("[{", "MACP_AUTH_EXTERNAL_ISSUERS is not JSON"),
        ({"issuer": "x"}, "must be a JSON array"),
        (["x"], "MACP_AUTH_EXTERNAL_ISSUERS[0] must be an object"),
        ([{**COGNITO, "jwks_uri": None}], "MACP_AUTH_EXTERNAL_ISSUERS[0].jwks_uri"),
        ([{**COGNITO, "jwks_uri": "file:///etc/keys.json"}], "[0].jwks_uri must be an http(s) URL"),
        ([{**COGNITO, "audiences": []}], "[0].audiences must list"),
        ([{**COGNITO, "audiences": "one"}], "[0].audiences must be a list"),
        ([COGNITO, {**COGNITO, "default_tier": "gold"}], "[1].default_tier must be one of"),
        ([{**COGNITO, "client_class": "vip"}], "[0].client_class must be one of"),
        ([{**COGNITO, "jku": "https://x"}], "[0].jku is not a setting"),
        ([COGNITO, COGNITO], "names one issuer twice"),
    ],
)
def test_a_mistake_names_the_entry_and_the_field(value: object, named: str) -> None:
    with pytest.raises(SettingsError, match=None) as refused:
        _parse(value)
    assert named in str(refused.value)
    assert "\n" not in str(refused.value)
