"""The webhook deliverers' settings (`MACP_ORCHESTRATOR_WEBHOOK_*`, and the shared sealing key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.settings import Env
from services.runtime.webhook_addresses import allow_loopback
from services.runtime.webhook_secrets import webhooks_sealing_key

PREFIX = "MACP_ORCHESTRATOR_WEBHOOK_"


@dataclass(frozen=True)
class DeliverySettings:
    # Attempts at one event before it is dead-lettered (the first included).
    attempts: int
    # The wait before the first retry; each next one waits twice as long, up to `retry_max_seconds`.
    retry_base_seconds: float
    retry_max_seconds: float
    # How long a receiver has to answer one POST.
    request_timeout_seconds: float
    # How often the subscriptions (and a tenant-wide one's active conversations) are read again.
    poll_seconds: float
    # How long a (subscription, conversation) lease lasts unless renewed: the longest a dead
    # deliverer's stream waits before another process delivers it.
    lease_ms: int
    # Deliver to loopback receivers (`MACP_WEBHOOKS_ALLOW_LOOPBACK_HTTP`: `macp up` and tests); no
    # other internal address is ever delivered to (services/runtime/webhook_addresses.py).
    loopback_allowed: bool = False
    # Opens the subscriptions' signing secrets (`MACP_WEBHOOKS_SEALING_KEY`, the conversation
    # service's key); without it nothing is delivered, and start-up says so.
    sealing_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Env) -> DeliverySettings:
        return cls(
            attempts=env.integer(f"{PREFIX}ATTEMPTS", 8, minimum=1, maximum=100),
            retry_base_seconds=env.number(f"{PREFIX}RETRY_BASE_SECONDS", 1.0, minimum=0.001),
            retry_max_seconds=env.number(f"{PREFIX}RETRY_MAX_SECONDS", 600.0, minimum=0.001),
            request_timeout_seconds=env.number(f"{PREFIX}REQUEST_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            poll_seconds=env.number(f"{PREFIX}POLL_SECONDS", 5.0, minimum=0.05),
            lease_ms=env.integer(f"{PREFIX}LEASE_MS", 10_000, minimum=300, maximum=600_000),
            loopback_allowed=allow_loopback(env),
            sealing_key=webhooks_sealing_key(env),
        )

    def backoff(self, failed_attempts: int) -> float:
        """The wait after the `failed_attempts`-th failure: base, 2 x base, 4 x base, ... capped."""
        return float(min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (failed_attempts - 1)))
