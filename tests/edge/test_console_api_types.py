"""The console's committed API types (console/src/api/schema.d.ts) are what scripts/gen_console_api.py
makes of the edge's OpenAPI document now: a route, parameter or body changed without regenerating
them fails here, with the command that fixes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.gen_console_api import DEFAULT_OUT, REPO_ROOT


def test_committed_types_match_the_openapi_document(tmp_path: Path) -> None:
    fresh = tmp_path / "schema.d.ts"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_console_api.py"), "--out", str(fresh)],
        check=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert fresh.read_text() == DEFAULT_OUT.read_text(), (
        "console/src/api/schema.d.ts is stale: run `python scripts/gen_console_api.py` and commit it"
    )


def test_types_name_the_routes_the_console_calls() -> None:
    types = DEFAULT_OUT.read_text()
    for path in ('"/v1/agents/{id}"', '"/v1/conversations/{id}/messages"', '"/v1/usage"', '"/v1/audit"'):
        assert path in types
