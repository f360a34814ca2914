"""Secrets `macp up` makes for itself: created once, kept private, never over the environment's."""

from __future__ import annotations

import stat
from pathlib import Path

from services.stack.secrets import GENERATED, local_secrets


def test_secrets_are_generated_once_and_kept_private(tmp_path: Path) -> None:
    first = local_secrets(tmp_path, {})
    assert set(first) == set(GENERATED)
    assert all(len(value) >= 43 for value in first.values())
    assert local_secrets(tmp_path, {}) == first  # a restart reuses them: sealed keys stay readable
    mode = stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode)
    assert mode == 0o600


def test_the_environment_wins_over_generated_secrets(tmp_path: Path) -> None:
    chosen = {"MACP_TOKEN_KEY_ENCRYPTION_KEY": "set-by-the-operator"}
    assert "MACP_TOKEN_KEY_ENCRYPTION_KEY" not in local_secrets(tmp_path, chosen)
    assert "MACP_TOKEN_INITIAL_ACCESS_TOKEN" in local_secrets(tmp_path, chosen)
