"""Secrets the native stack makes for itself on first start and keeps in its data dir.

A laptop stack must come up with one command, yet the token service refuses to start without a
key-encryption key, the orchestrator without the key that seals its queued rounds' tokens, the
tool gateway keeps no upstream credential without the key that seals them, nor the conversation
service an outside A2A agent's client secret without the key it and the agent proxy share, and
client registration needs an initial access token. `macp up` generates
each once, stores them in `<data_dir>/secrets.json` (mode 0600) so tokens and sealed signing keys
stay valid across restarts, and never overrides a value the environment already sets.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

# variable -> how to make a fresh value
GENERATED: dict[str, Callable[[], str]] = {
    "MACP_TOKEN_KEY_ENCRYPTION_KEY": lambda: secrets.token_urlsafe(32),
    "MACP_TOKEN_INITIAL_ACCESS_TOKEN": lambda: secrets.token_urlsafe(32),
    "MACP_ORCHESTRATOR_SEALING_KEY": lambda: secrets.token_urlsafe(32),
    "MACP_TOOL_GATEWAY_SEALING_KEY": lambda: secrets.token_urlsafe(32),
    "MACP_A2A_SEALING_KEY": lambda: secrets.token_urlsafe(32),
    # Seals webhook subscriptions' signing secrets; the orchestrator opens them to sign deliveries.
    "MACP_WEBHOOKS_SEALING_KEY": lambda: secrets.token_urlsafe(32),
}


def local_secrets(data_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The generated secrets the environment does not set, created on first use."""
    path = data_dir / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in GENERATED if name not in stored]
    if missing:
        stored |= {name: GENERATED[name]() for name in missing}
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(stored, out, indent=2, sort_keys=True)
        os.replace(path.with_suffix(".tmp"), path)
    return {name: value for name, value in stored.items() if not environ.get(name)}
