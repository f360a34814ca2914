"""`macp envoy-render [--check]`: write (or verify) the committed Envoy configs in `envoy/`.

`envoy/envoy.compose.yaml` is what compose mounts into the Envoy container. `envoy/envoy.native.yaml`
is a readable reference only: the native launcher renders its own copy into the data dir at
start-up with the ports it actually uses. Both are rendered with an empty environment, so the
committed bytes never depend on who ran the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.runtime.settings import Env
from services.stack.envoy_config import TARGETS, render_yaml

FIX_COMMAND = "macp envoy-render"


def rendered_files() -> dict[str, str]:
    """File name in `envoy/` -> its exact expected contents."""
    return {f"envoy.{target}.yaml": render_yaml(target, Env({})) for target in TARGETS}


def stale_files(directory: Path) -> list[Path]:
    """The files in `directory` that are missing or differ from a fresh render."""
    stale = []
    for name, text in rendered_files().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file in envoy/ differs from the registry",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("envoy"),
        help="directory of the Envoy configs (default: envoy/ in the current directory, the repo root)",
    )


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not directory.is_dir() and not (directory.parent / "pyproject.toml").is_file():
        # Refuse to scatter files: run from the repository root, or name the directory.
        print(f"{directory}/ is not there; run this from the repository root or pass --dir", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_files(directory)
        for path in stale:
            print(
                f"{path} is stale (it does not match services/runtime/registry.py); run `{FIX_COMMAND}`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in rendered_files().items():
        path = directory / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0
