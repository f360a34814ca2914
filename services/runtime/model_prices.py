"""List prices per million tokens of the models MACP knows: Bid's cost estimate, and the provider cost
an A2A task reports (services/runtime/a2a_usage.py). Not billing: metering prices plans.

Prices are US dollars per million tokens, which is also micro-dollars per token, so a cost in
millionths of a dollar is tokens times price. A model not listed costs its provider's default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        return round(input_tokens * self.input_per_million + output_tokens * self.output_per_million)


FREE = Price(0.0, 0.0)
# Matched by prefix, longest first, so "claude-haiku-4-5-20251001" finds "claude-haiku".
MODEL_PRICES = {
    "claude-opus": Price(15.0, 75.0),
    "claude-sonnet": Price(3.0, 15.0),
    "claude-haiku": Price(1.0, 5.0),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.0),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1": Price(2.0, 8.0),
}
PROVIDER_DEFAULTS = {"anthropic": Price(3.0, 15.0), "openai": Price(2.50, 10.0)}


def price_of(provider: str, model: str) -> Price:
    for prefix in sorted(MODEL_PRICES, key=len, reverse=True):
        if model.startswith(prefix):
            return MODEL_PRICES[prefix]
    return PROVIDER_DEFAULTS.get(provider, FREE)  # the local server and self-hosted models cost nothing
