"""The token service's settings: defaults, and one line naming the variable for a bad value."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.runtime.settings import Env, SettingsError
from services.token.settings import TokenSettings
from tests.token.harness import new_key_encryption_key

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    kek = new_key_encryption_key()
    settings = TokenSettings.from_env(Env({"MACP_TOKEN_KEY_ENCRYPTION_KEY": kek}))
    assert settings.issuer == "http://127.0.0.1:8080"
    assert settings.key_encryption_key == base64.urlsafe_b64decode(kek + "=")
    assert settings.access_token_seconds == 900
    assert settings.refresh_token_seconds == 30 * 86400
    assert settings.max_delegation_depth == 2
    assert settings.initial_access_token is None
    assert settings.max_token_seconds == 86400


def test_the_key_may_be_standard_base64_with_padding() -> None:
    raw = os.urandom(32)
    settings = TokenSettings.from_env(Env({"MACP_TOKEN_KEY_ENCRYPTION_KEY": base64.b64encode(raw).decode()}))
    assert settings.key_encryption_key == raw


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "MACP_TOKEN_KEY_ENCRYPTION_KEY is not set"),
        ("not base64!", "MACP_TOKEN_KEY_ENCRYPTION_KEY is malformed (not base64)"),
        (base64.urlsafe_b64encode(bytes(16)).decode(), "(decodes to 16 bytes, not 32)"),
    ],
)
def test_a_missing_or_malformed_key_is_one_line_without_the_value(value: str | None, problem: str) -> None:
    environ = {} if value is None else {"MACP_TOKEN_KEY_ENCRYPTION_KEY": value}
    with pytest.raises(SettingsError) as refused:
        TokenSettings.from_env(Env(environ))
    message = str(refused.value)
    assert problem in message
    assert "secrets.token_urlsafe(32)" in message
    assert "\n" not in message
    if value is not None:
        assert value not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MACP_TOKEN_ISSUER", "not a url"),
        ("MACP_TOKEN_ACCESS_TOKEN_SECONDS", "5"),
        ("MACP_TOKEN_MAX_DELEGATION_DEPTH", "9"),
        ("MACP_TOKEN_INITIAL_ACCESS_TOKEN", "short"),
    ],
)
def test_other_bad_values_name_their_variable(variable: str, value: str) -> None:
    environ = {"MACP_TOKEN_KEY_ENCRYPTION_KEY": new_key_encryption_key(), variable: value}
    with pytest.raises(SettingsError, match=variable):
        TokenSettings.from_env(Env(environ))


def test_the_entry_point_stops_with_one_line_before_starting_anything() -> None:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MACP_")} | {
        "MACP_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "MACP_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.token"],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "token: MACP_TOKEN_KEY_ENCRYPTION_KEY is not set; set it to 32 random bytes in base64url "
        '(generate one with python -c "import secrets; print(secrets.token_urlsafe(32))")'
    ]
