"""The local admin file `macp up` writes and the account commands read (no stack needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.cli.main import main
from services.stack import seed

ADMIN = seed.LocalAdmin(
    admin_client_id="a",
    admin_client_secret="s",
    tenant_id="local",
    username="admin",
    password="p" * 12,
    cli_client_id="c",
)


def test_saved_credentials_are_private_and_read_back(tmp_path: Path) -> None:
    seed.save(tmp_path, ADMIN)
    assert stat.S_IMODE(seed.admin_file(tmp_path).stat().st_mode) == 0o600
    assert seed.load(tmp_path) == ADMIN


def test_missing_or_damaged_credentials_read_as_none(tmp_path: Path) -> None:
    assert seed.load(tmp_path) is None
    seed.admin_file(tmp_path).write_text("{not json")
    assert seed.load(tmp_path) is None
    seed.admin_file(tmp_path).write_text('{"admin_client_id": "a"}')
    assert seed.load(tmp_path) is None


def test_commands_without_a_running_stack_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tenant", "create", "acme", "--data-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no MACP stack is running" in err
