"""A queued or in-flight round as Redis keeps it, with its sender's bearer token sealed.

A round may be driven by another process than the one its message reached (a queued message, a
takeover after a driver died), and that process calls the other services as the sender, so the
sender's token must be kept with the round. It is kept sealed (AES-256-GCM under
`MACP_ORCHESTRATOR_SEALING_KEY`, services/runtime/sealing.py), bound to its conversation and
message: whoever reads Redis, a dump of it or its replica, holds no usable credential. A hash would
not do: the token is used again, not compared.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from macp.common.v1 import principal_pb2

from services.orchestrator.downstream import Caller
from services.orchestrator.rounds import RoundJob
from services.runtime.sealing import Sealer


class RoundJobCodec:
    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def encode(self, job: RoundJob) -> str:
        sealed = self._sealer.seal(job.caller.token.encode(), _bound_to(job.conversation_id, job.message_id))
        return json.dumps(
            {
                "sealed_token": base64.b64encode(sealed).decode(),
                "principal": base64.b64encode(job.caller.principal.SerializeToString()).decode(),
                "conversation_id": job.conversation_id,
                "message_id": job.message_id,
                "text": job.text,
                "sequence": job.sequence,
                "mentions": list(job.mentions),
                "trace_context": dict(job.trace_context),
            }
        )

    def decode(self, data: bytes | str) -> RoundJob:
        """The job; SealError when this process's sealing key is not the one that sealed it."""
        fields: dict[str, Any] = json.loads(data)
        principal = principal_pb2.Principal.FromString(base64.b64decode(fields["principal"]))
        bound = _bound_to(fields["conversation_id"], fields["message_id"])
        token = self._sealer.open(base64.b64decode(fields["sealed_token"]), bound).decode()
        return RoundJob(
            caller=Caller(token, principal),
            conversation_id=fields["conversation_id"],
            message_id=fields["message_id"],
            text=fields["text"],
            sequence=int(fields["sequence"]),
            mentions=tuple(fields["mentions"]),
            trace_context=tuple(fields.get("trace_context", {}).items()),
        )


def _bound_to(conversation_id: str, message_id: str) -> bytes:
    return f"round-job {conversation_id} {message_id}".encode()
