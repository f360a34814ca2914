"""The console builds from the repository's own package.json and lockfile (`npm run build:console`:
typecheck, then Vite), into a page that loads nothing from another origin and whose JavaScript
stays within its budget of 300 KB gzipped."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

from scripts.gen_console_api import REPO_ROOT

BUDGET_BYTES = 300 * 1024
TSC = REPO_ROOT / "node_modules" / ".bin" / "tsc"
VITE = REPO_ROOT / "node_modules" / ".bin" / "vite"


def test_console_builds_within_budget_and_self_contained(tmp_path: Path) -> None:
    assert VITE.exists(), "node_modules is missing: run `npm ci` at the repository root"
    subprocess.run([str(TSC), "--noEmit", "-p", "console"], check=True, cwd=REPO_ROOT, timeout=300)
    out = tmp_path / "dist"
    subprocess.run(
        [
            str(VITE),
            "build",
            "--config",
            "console/vite.config.mts",
            "--outDir",
            str(out),
            "--logLevel",
            "warn",
        ],
        check=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    index = (out / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', index)
    assert references, index
    for reference in references:
        assert reference.startswith("/console/"), f"index.html loads {reference} from outside the console"
    assert "<script>" not in index, "an inline script would need the CSP to allow it"
    scripts = sorted((out / "assets").glob("*.js"))
    assert scripts
    gzipped = sum(len(gzip.compress(path.read_bytes(), 9)) for path in scripts)
    assert gzipped <= BUDGET_BYTES, (
        f"the console's JavaScript is {gzipped} bytes gzipped, over {BUDGET_BYTES}"
    )
    for path in scripts:
        text = path.read_text()
        # No font, stylesheet or script fetched from a CDN at run time.
        assert not re.search(r"https?://(fonts\.|cdn|unpkg|jsdelivr)", text), path.name
