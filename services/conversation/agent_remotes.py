"""The remote of an agent of provider `a2a`: the outside A2A agent it is (docs/a2a-remote-agents.md).

An `a2a` agent must have one and no other agent may (INVALID_ARGUMENT naming `agent.remote`). Its
client secret (REMOTE_AUTH_CLIENT_CREDENTIALS) is input only: taken out of the agent before it is
stored or returned, and kept sealed beside it (services/runtime/a2a_remote_sealing.py) under
`MACP_A2A_SEALING_KEY`, which the agent proxy holds too: it alone opens it, to call the remote. The
key is needed only once a secret is kept: a secret given while it is unset is refused
(FAILED_PRECONDITION naming the variable). An update that gives no new secret keeps the stored one.
"""

from __future__ import annotations

import re

from macp.conversation.v1 import conversation_service_pb2 as pb

from services.runtime.a2a_remote_sealing import SEALING_KEY, associated_data
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.sealing import GENERATE_HINT, Sealer

A2A = "a2a"
# RFC 6749 3.3: scope-token = 1*NQCHAR, separated by single spaces.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")
SECRET_FIELD = "agent.remote.client_credentials.client_secret"


class AgentRemotes:
    def __init__(self, key: bytes | None) -> None:
        self._sealer = None if key is None else Sealer(key)

    def take_secret(self, agent: pb.Agent, kept: bytes | None) -> bytes | None:
        """Check `agent`'s remote against its provider, take its client secret out of it, and return
        what to keep sealed: the new secret sealed, else `kept` (the stored one), else None."""
        if agent.provider == A2A and not agent.HasField("remote"):
            raise InvalidArgument("agent.remote: required for provider a2a (the outside A2A agent it is)")
        if agent.provider != A2A and agent.HasField("remote"):
            raise InvalidArgument(
                f"agent.remote: only an agent of provider a2a has one, not {agent.provider}"
            )
        if agent.remote.auth != pb.REMOTE_AUTH_CLIENT_CREDENTIALS:
            return None
        grant = agent.remote.client_credentials
        if grant.scope and not _SCOPE.fullmatch(grant.scope):
            raise InvalidArgument(
                "agent.remote.client_credentials.scope: scope tokens separated by single spaces "
                "(RFC 6749 section 3.3)"
            )
        secret, grant.client_secret = grant.client_secret, ""
        if secret:
            return self._seal(agent, secret)
        if kept is not None:
            return kept
        raise InvalidArgument(f"{SECRET_FIELD}: value is required")

    def _seal(self, agent: pb.Agent, secret: str) -> bytes:
        if self._sealer is None:
            raise FailedPrecondition(
                f"{SECRET_FIELD}: this service keeps no secrets: {SEALING_KEY} is not set (set it on the "
                f"conversation service and the agent proxy to 32 random bytes in base64url: {GENERATE_HINT})"
            )
        return self._sealer.seal(secret.encode(), associated_data(agent.tenant_id, agent.id))
