"""The configured providers, one circuit breaker per provider and model, and the fallback order.

A call names a provider and a model. Its candidates are that pair first, then every other
configured (provider, model) pair in the configured order (`MACP_AGENT_PROXY_PROVIDERS`, then each
provider's `MODELS`): a call goes to the first candidate whose breaker lets it through, so while
one breaker is open its calls are served by the next configured model or provider, and a call whose
candidate fails before its first token goes on to the next one (services/agent_proxy/generation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.agent_proxy.anthropic_provider import AnthropicProvider
from services.agent_proxy.openai_provider import OpenAIProvider
from services.agent_proxy.provider import Provider
from services.agent_proxy.settings import ProviderConfig, ProxySettings
from services.runtime.breaker import BreakerPolicy, CircuitBreaker, Clock
from services.runtime.errors import InvalidArgument


def sdk_provider(config: ProviderConfig) -> Provider:
    if config.protocol == "anthropic":
        return AnthropicProvider(config)
    return OpenAIProvider(config)


@dataclass(frozen=True)
class Target:
    provider: Provider
    model: str
    breaker: CircuitBreaker

    @property
    def name(self) -> str:
        return f"{self.provider.config.name}/{self.model}"


class Providers:
    def __init__(
        self,
        settings: ProxySettings,
        clock: Clock,
        make_provider: Callable[[ProviderConfig], Provider] = sdk_provider,
    ) -> None:
        self._providers = {config.name: make_provider(config) for config in settings.providers}
        self._policy = BreakerPolicy(settings.breaker_failures, settings.breaker_open_seconds)
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.configured_pairs = [(c.name, m) for c in settings.providers for m in c.models]

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    def breaker(self, provider: str, model: str) -> CircuitBreaker:
        key = (provider, model)
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(self._policy, self._clock)
        return self._breakers[key]

    def require(self, provider: str) -> Provider:
        found = self._providers.get(provider)
        if found is None:
            configured = ", ".join(sorted(self._providers))
            raise InvalidArgument(f"provider: {provider!r} is not configured here; configured: {configured}")
        return found

    def candidates(self, provider: str, model: str) -> list[Target]:
        self.require(provider)
        pairs = [(provider, model), *(pair for pair in self.configured_pairs if pair != (provider, model))]
        return [Target(self._providers[p], m, self.breaker(p, m)) for p, m in pairs]

    def breaker_states(self) -> list[tuple[str, str, str]]:
        """(provider, model, state) of every configured pair and every other pair a call has used.

        Read from the metrics server's thread: it copies the breakers (one C-level dict copy, safe
        beside the event loop adding one) and creates none, unlike `pairs_with_breakers`."""
        breakers = dict(self._breakers)
        states = {pair: breaker.state.value for pair, breaker in breakers.items()}
        pairs = sorted(set(self.configured_pairs) | set(breakers))
        return [(provider, model, states.get((provider, model), "closed")) for provider, model in pairs]

    def pairs_with_breakers(self) -> list[tuple[ProviderConfig, str, CircuitBreaker]]:
        """Every configured pair and every other pair a call has used, sorted by provider and model."""
        pairs = set(self.configured_pairs) | set(self._breakers)
        return [(self._providers[p].config, m, self.breaker(p, m)) for p, m in sorted(pairs)]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
