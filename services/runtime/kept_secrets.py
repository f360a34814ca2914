"""The sealing key of a service that keeps outside credentials' secrets (services/runtime/sealing.py):
optional until a secret is kept, but never malformed. The tool gateway keeps upstream servers'
secrets under `MACP_TOOL_GATEWAY_SEALING_KEY`; the conversation service seals an outside A2A agent's
client secret under `MACP_A2A_SEALING_KEY`, which the agent proxy, the one that opens it to call
the remote, holds too."""

from __future__ import annotations

from services.runtime.sealing import GENERATE_HINT, decode_sealing_key
from services.runtime.settings import Env, SettingsError


def optional_sealing_key(env: Env, name: str) -> bytes | None:
    """The key in variable `name`, or None when it is unset; SettingsError naming the variable,
    never the value, when it is malformed."""
    text = env.raw(name)
    if text is None:
        return None
    try:
        return decode_sealing_key(text)
    except ValueError as exc:
        raise SettingsError(
            f"{name} is malformed ({exc}); set it to 32 random bytes in base64url "
            f"(generate one with {GENERATE_HINT})"
        ) from None
