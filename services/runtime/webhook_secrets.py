"""What the conversation service and the orchestrator's webhook deliverers share about a webhook
subscription's signing secret (docs/webhooks.md).

The secret is made by the conversation service when a subscription is created, shown to the
subscriber once, and kept sealed (services/runtime/sealing.py) under `MACP_WEBHOOKS_SEALING_KEY`,
which the orchestrator holds too: its deliverers open it to sign each delivery. The associated
data binds a sealed secret to its tenant and subscription, so one copied to another row does not
open. The internal RPCs that hand the sealed secrets out need `webhooks:deliver`, a scope only the
orchestrator's own internal client asks for.
"""

from __future__ import annotations

from services.runtime.kept_secrets import optional_sealing_key
from services.runtime.settings import Env

SEALING_KEY = "MACP_WEBHOOKS_SEALING_KEY"
DELIVER_SCOPE = "webhooks:deliver"
# Standard Webhooks: a secret is `whsec_` and the base64 of its key bytes.
SECRET_PREFIX = "whsec_"


def associated_data(tenant_id: str, subscription_id: str) -> bytes:
    return f"webhook-subscription/{tenant_id}/{subscription_id}/secret".encode()


def webhooks_sealing_key(env: Env) -> bytes | None:
    return optional_sealing_key(env, SEALING_KEY)
