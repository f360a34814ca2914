"""The provider server's settings: where it listens (`MACP_PROVIDER_SERVER_PORT`)."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.registry import PROVIDER_SERVER
from services.runtime.settings import CommonSettings, Env


@dataclass(frozen=True)
class ProviderServerSettings:
    common: CommonSettings
    port: int

    @classmethod
    def from_env(cls, env: Env) -> ProviderServerSettings:
        return cls(
            common=CommonSettings.from_env(env),
            port=env.port("MACP_PROVIDER_SERVER_PORT", PROVIDER_SERVER.port),
        )
