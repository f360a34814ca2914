"""The environment is exactly the lock: what `./dev test` installed is what requirements.lock says,
the lock still satisfies pyproject.toml's ranges, and the runtime lock (the Docker image's) is the
same versions less the dev tools. A fresh machine next month must get this very set.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
FULL_LOCK = REPO_ROOT / "requirements.lock"
RUNTIME_LOCK = REPO_ROOT / "requirements-runtime.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
# Distributions a venv holds that no lock names: the installer itself, this project and its client.
NOT_LOCKED = {"pip", "macp", "macp-client"}


def pins(lock: Path) -> dict[str, str]:
    """A lock file's pins, canonical name -> version; every pin carries at least one hash."""
    found: dict[str, str] = {}
    text = lock.read_text()
    for block in re.split(r"\n(?=\S)", text):
        match = PIN.match(block)
        if match is None:
            continue
        assert "--hash=sha256:" in block, f"{lock.name}: {match.group(1)} is pinned without a hash"
        found[canonicalize_name(match.group(1))] = match.group(2)
    assert found, f"{lock.name} pins nothing"
    return found


def installed() -> dict[str, str]:
    return {canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def test_every_installed_distribution_is_exactly_the_locked_one() -> None:
    locked = pins(FULL_LOCK)
    present = installed()
    wrong = {
        name: (present.get(name), version) for name, version in locked.items() if present.get(name) != version
    }
    unlocked = sorted(set(present) - set(locked) - NOT_LOCKED)
    assert not wrong, f"installed differs from requirements.lock (installed, locked): {wrong}"
    assert not unlocked, f"installed but not in requirements.lock: {unlocked}"


def test_the_lock_satisfies_every_range_pyproject_declares() -> None:
    """A range edited in pyproject.toml without `./dev lock` would leave the lock stale."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["dev"],
    ]
    locked = pins(FULL_LOCK)
    unmet = []
    for line in declared:
        requirement = Requirement(line)
        version = locked.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{line} (locked: {version})")
    assert not unmet, f"requirements.lock is stale; run ./dev lock: {unmet}"


def test_the_runtime_lock_is_the_full_lock_less_the_dev_tools() -> None:
    runtime, full = pins(RUNTIME_LOCK), pins(FULL_LOCK)
    differ = {
        name: (version, full.get(name)) for name, version in runtime.items() if full.get(name) != version
    }
    assert not differ, f"requirements-runtime.lock disagrees with requirements.lock: {differ}"
    for tool in ("pytest", "mypy", "ruff"):
        assert tool not in runtime, f"{tool} is a dev tool and must not be in the image's lock"
