"""Files rendered from the registry and committed (Envoy's configs, the Kubernetes tree): the one
way to write them, to check them and to name the fix, shared by `macp envoy-render` and
`macp k8s-render`.

They are rendered with an empty environment, so the committed bytes never depend on who ran the
command; a check lists every file missing, differing from a fresh render or, where the tree prunes,
left over from an older render.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RenderedTree:
    """A directory of generated files: what they are, where they live, how they are made."""

    what: str  # "the Envoy configs", for help texts
    default_dir: Path  # relative to the repository root
    render: Callable[[], dict[str, str]]  # path under the directory -> its exact contents
    fix_command: str
    # A YAML file the render no longer makes is stale too (and removed by a write): a workload the
    # registry stopped naming must not stay deployed.
    prune: bool = False

    def stale_files(self, directory: Path) -> list[Path]:
        expected = self.render()
        stale = [
            directory / name
            for name, text in expected.items()
            if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text
        ]
        if self.prune and directory.is_dir():
            present = {path.relative_to(directory).as_posix() for path in directory.rglob("*.yaml")}
            stale += [directory / name for name in sorted(present - set(expected))]
        return stale

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help=f"write nothing; exit 1 if a file in {self.default_dir}/ differs from the registry",
        )
        parser.add_argument(
            "--dir",
            type=Path,
            default=self.default_dir,
            help=f"directory of {self.what} (default: {self.default_dir}/ under the current directory, "
            "the repository root)",
        )

    def run(self, args: argparse.Namespace) -> int:
        directory: Path = args.dir
        root = directory.parents[len(self.default_dir.parts) - 1] if directory.parts else Path()
        if not directory.is_dir() and not (root / "pyproject.toml").is_file():
            # Refuse to scatter files: run from the repository root, or name the directory.
            print(
                f"{directory}/ is not there; run this from the repository root or pass --dir", file=sys.stderr
            )
            return 2
        if args.check:
            stale = self.stale_files(directory)
            for path in stale:
                print(
                    f"{path} is stale (it does not match services/runtime/registry.py); "
                    f"run `{self.fix_command}`",
                    file=sys.stderr,
                )
            return 1 if stale else 0
        for name, text in self.render().items():
            path = directory / name
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        for path in self.stale_files(directory) if self.prune else []:
            path.unlink()  # left over from a render of something the registry no longer names
            print(f"removed {path}")
        return 0
