"""The usage of an A2A task, in its metadata under MACP's usage extension (docs/a2a.md).

A2A v1.0 has no standard field for what a task cost (a2aproject/A2A #1155), so MACP carries it as
an extension: the task's `metadata[USAGE_EXTENSION_URI]` is a JSON object

    {"inputTokens": 812, "outputTokens": 240, "agentTurns": 2, "orchestrations": 1,
     "providerCostMicros": 5836, "estimated": false,
     "agents": [{"agentId": "...", "inputTokens": 406, "outputTokens": 120, "turns": 1,
                 "provider": "anthropic", "model": "claude-sonnet-4-5",
                 "providerCostMicros": 2918, "estimated": false}, ...]}

built from the very usage events metering bills (the round's `usage` events of the conversation's
log), so a task's figures and `GET /v1/usage`'s agree. `agentTurns` and `orchestrations` are the
plan's billed units; `providerCostMicros` is the providers' list price of the tokens in millionths
of a US dollar (services/runtime/model_prices.py), what the tokens cost upstream, not the plan's
price. `estimated` is true when a figure was estimated rather than reported (an outside A2A agent
that reports none).

The edge writes it on every task it serves; the agent proxy reads it from an outside A2A agent's
task (the same URI) to meter that agent's turn with the remote's own figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from macp.common.v1 import usage_pb2

from services.runtime.model_prices import price_of

USAGE_EXTENSION_URI: Final = "urn:macp:a2a:usage:v1"


@dataclass
class AgentUsage:
    agent_id: str
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    turns: int = 0
    estimated: bool = False

    @property
    def provider_cost_micros(self) -> int:
        return price_of(self.provider, self.model).cost_micros(self.input_tokens, self.output_tokens)

    def document(self) -> dict[str, Any]:
        return {
            "agentId": self.agent_id,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "turns": self.turns,
            "provider": self.provider,
            "model": self.model,
            "providerCostMicros": self.provider_cost_micros,
            "estimated": self.estimated,
        }


@dataclass
class TaskUsage:
    """What a task's usage events add up to, per agent and in all."""

    agents: dict[str, AgentUsage] = field(default_factory=dict)
    orchestrations: int = 0

    def add(self, event: usage_pb2.UsageEvent) -> None:
        """Counts one usage event of the task's round (other kinds than turns and orchestrations,
        such as tool calls, are billed on their own and not part of a task's figures)."""
        if event.type == usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION:
            self.orchestrations += 1
            return
        if event.type != usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN:
            return
        agent = self.agents.setdefault(event.agent_id, AgentUsage(agent_id=event.agent_id))
        dimensions = event.dimensions
        agent.provider = dimensions.provider or agent.provider
        agent.model = dimensions.model or agent.model
        agent.input_tokens += dimensions.input_tokens
        agent.output_tokens += dimensions.output_tokens
        agent.turns += 1
        agent.estimated = agent.estimated or dimensions.estimated

    def document(self) -> dict[str, Any]:
        agents = list(self.agents.values())
        return {
            "inputTokens": sum(agent.input_tokens for agent in agents),
            "outputTokens": sum(agent.output_tokens for agent in agents),
            "agentTurns": sum(agent.turns for agent in agents),
            "orchestrations": self.orchestrations,
            "providerCostMicros": sum(agent.provider_cost_micros for agent in agents),
            "estimated": any(agent.estimated for agent in agents),
            "agents": [agent.document() for agent in agents],
        }


@dataclass(frozen=True)
class ReportedUsage:
    """The tokens an outside A2A agent reported for its task."""

    input_tokens: int
    output_tokens: int


def reported_usage(metadata: dict[str, Any]) -> ReportedUsage | None:
    """The usage a remote A2A task's metadata reports under the extension, if it reports one whole
    (both token counts, non-negative integers); None otherwise, and the caller estimates."""
    document = metadata.get(USAGE_EXTENSION_URI)
    if not isinstance(document, dict):
        return None
    input_tokens = _count(document.get("inputTokens"))
    output_tokens = _count(document.get("outputTokens"))
    if input_tokens is None or output_tokens is None:
        return None
    return ReportedUsage(input_tokens, output_tokens)


def _count(value: object) -> int | None:
    """A JSON token count: an integer >= 0 (protobuf's Struct gives every number as a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value < 0 or not float(value).is_integer():
        return None
    return int(value)
