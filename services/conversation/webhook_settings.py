"""The conversation service's webhook settings, read once at start-up beside its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.settings import Env
from services.runtime.webhook_addresses import allow_loopback
from services.runtime.webhook_secrets import webhooks_sealing_key


@dataclass(frozen=True)
class WebhookSettings:
    """allow_loopback_http: accept an http URL whose host is loopback (`macp up` and tests turn it
    on; a deployment leaves it off, and every URL is https).
    sealing_key: seals subscriptions' signing secrets (`MACP_WEBHOOKS_SEALING_KEY`, which the
    orchestrator holds too); optional until a subscription is created."""

    allow_loopback_http: bool = False
    sealing_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Env) -> WebhookSettings:
        return cls(
            allow_loopback_http=allow_loopback(env),
            sealing_key=webhooks_sealing_key(env),
        )
