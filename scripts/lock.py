"""Refresh the Python lock files: the one deliberate way to move any Python dependency.

    ./dev lock                 # re-resolve within pyproject.toml's ranges, newest allowed versions
    ./dev lock --package NAME  # move one package (and only what it needs) to its newest version

`./dev up`, `./dev test` and the Dockerfile install exactly what the lock files say, with
pip's `--require-hashes`, so a fresh machine gets the same set next month as today. Two files:

- `requirements.lock`: the whole development environment (the runtime, the dev extras with
  every linter, type stub and test tool, the build backend, and uv itself, which this script
  runs from `.venv`);
- `requirements-runtime.lock`: the runtime alone, for the Docker image, constrained to the
  very versions of the first file so the image runs what the suite tested.

Both are resolved for CPython 3.11 on Linux, the one platform the stack ships on, with the hash
of every file PyPI holds for each pinned version. After this command, `./dev test` reinstalls
the environment from the new lock and runs the suite: a lock is only worth committing green.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = REPO_ROOT / "pyproject.toml"
FULL_LOCK = REPO_ROOT / "requirements.lock"
RUNTIME_LOCK = REPO_ROOT / "requirements-runtime.lock"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_31"


def build_requirements() -> list[str]:
    """pyproject.toml's build-system requirements: installed from the lock, so the project's own
    editable install needs no unpinned build environment (`--no-build-isolation`)."""
    requires: list[str] = tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]
    return requires


def compile_lock(output: Path, extra_args: list[str]) -> None:
    """One `uv pip compile` of pyproject.toml plus the build requirements (read from standard
    input, so the lock's annotations name no scratch file)."""
    command = [
        str(Path(sys.executable).parent / "uv"),
        "pip",
        "compile",
        PYPROJECT.name,
        "-",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--generate-hashes",
        "--no-header",
        "--quiet",
        "--output-file",
        str(output),
        *extra_args,
    ]
    build = "\n".join(build_requirements()) + "\n"
    subprocess.run(command, input=build, text=True, check=True, cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--package", action="append", default=[], help="upgrade only this package")
    args = parser.parse_args(argv)
    upgrade = [arg for name in args.package for arg in ("--upgrade-package", name)] or ["--upgrade"]

    compile_lock(FULL_LOCK, ["--extra", "dev", *upgrade])
    # The runtime set is the full set's versions, less the dev tools: never a second resolution.
    compile_lock(RUNTIME_LOCK, ["--constraint", FULL_LOCK.name])
    print(f"wrote {FULL_LOCK.name} and {RUNTIME_LOCK.name}; now run ./dev test")


if __name__ == "__main__":
    main()
