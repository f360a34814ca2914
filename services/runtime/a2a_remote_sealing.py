"""Where an outside A2A agent's client secret is sealed and opened: the conversation service seals
it when the agent is written (services/conversation/agent_remotes.py), the agent proxy opens it to
call the remote (services/agent_proxy/remote_credentials.py), both under `MACP_A2A_SEALING_KEY`.

The associated data binds a sealed secret to its tenant and agent, so a sealed value copied to
another agent's row (or handed out for another agent) does not open."""

from __future__ import annotations

from services.runtime.kept_secrets import optional_sealing_key
from services.runtime.settings import Env

SEALING_KEY = "MACP_A2A_SEALING_KEY"


def associated_data(tenant_id: str, agent_id: str) -> bytes:
    return f"a2a-agent/{tenant_id}/{agent_id}/client-secret".encode()


def a2a_sealing_key(env: Env) -> bytes | None:
    return optional_sealing_key(env, SEALING_KEY)
