"""Bid: how well an agent fits the next turn, from its hints alone, and what answering would cost.

The score is deterministic (the same request always scores the same) and explainable:

- relevance (weight 0.6): the share of the agent's keywords found in the message to answer
  (whole words, any case; three hits count as full), or, if higher, 0.8 times the share of its
  capability tags found there (`code-review` matches "code review");
- eagerness (weight 0.25): the agent's own `eagerness` hint, 0.5 when unset;
- recency (weight 0.15): how long since the agent last spoke: 0 right after its own message,
  rising to 1 four messages later (or when it has not spoken yet), so agents take turns.

A bid below the agent's `min_score` is declined. Costs are estimated at four characters per token
for the prompt and the agent's `max_tokens` (or the default) for the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.agent_proxy.usage import estimate_tokens
from services.runtime.model_prices import price_of

RELEVANCE_WEIGHT = 0.6
EAGERNESS_WEIGHT = 0.25
RECENCY_WEIGHT = 0.15
FULL_KEYWORD_HITS = 3
CAPABILITY_DISCOUNT = 0.8
RECENCY_MESSAGES = 4
DEFAULT_EAGERNESS = 0.5


def _mentions(text: str, phrase: str) -> bool:
    words = [re.escape(word) for word in re.split(r"[\s_-]+", phrase.strip().lower()) if word]
    if not words:
        return False
    return re.search(r"\b" + r"[\s_-]+".join(words) + r"\b", text) is not None


def _share(hits: int, of: int) -> float:
    return 0.0 if of == 0 else min(1.0, hits / min(of, FULL_KEYWORD_HITS))


def _messages_since_own_turn(messages: list[pb.ChatMessage]) -> int | None:
    for distance, message in enumerate(reversed(messages)):
        if message.role == pb.CHAT_ROLE_ASSISTANT:
            return distance
    return None


@dataclass(frozen=True)
class BidScore:
    score: float
    relevance: float
    eagerness: float
    recency: float

    def rationale(self, keyword_hits: list[str], capability_hits: list[str]) -> str:
        matched = keyword_hits + [f"capability {c}" for c in capability_hits]
        what = f"matched {', '.join(matched)}" if matched else "no keyword or capability matched"
        weights = (
            f"relevance {self.relevance:.2f}, eagerness {self.eagerness:.2f}, recency {self.recency:.2f}"
        )
        return f"{what}; {weights}"


def bid(request: pb.BidRequest, default_max_tokens: int) -> pb.BidResponse:
    messages = list(request.messages)
    text = messages[-1].text.lower()
    keywords = list(request.bidding.keywords)
    keyword_hits = [k for k in keywords if _mentions(text, k)]
    capability_hits = [c for c in request.capabilities if _mentions(text, c)]
    relevance = max(
        _share(len(keyword_hits), len(keywords)),
        CAPABILITY_DISCOUNT * _share(len(capability_hits), len(request.capabilities)),
    )
    hints = request.bidding
    eagerness = hints.eagerness if hints.HasField("eagerness") else DEFAULT_EAGERNESS
    since = _messages_since_own_turn(messages)
    recency = 1.0 if since is None else min(1.0, since / RECENCY_MESSAGES)
    score = BidScore(
        score=round(
            RELEVANCE_WEIGHT * relevance + EAGERNESS_WEIGHT * eagerness + RECENCY_WEIGHT * recency, 4
        ),
        relevance=relevance,
        eagerness=eagerness,
        recency=recency,
    )
    min_score = hints.min_score if hints.HasField("min_score") else 0.0
    prompt_characters = len(request.system_prompt) + sum(len(m.text) + len(m.name) for m in messages)
    input_tokens = estimate_tokens(prompt_characters)
    generation = request.generation
    output_tokens = generation.max_tokens if generation.HasField("max_tokens") else default_max_tokens
    return pb.BidResponse(
        score=score.score,
        declined=score.score < min_score,
        rationale=score.rationale(keyword_hits, capability_hits),
        estimated_input_tokens=input_tokens,
        estimated_output_tokens=output_tokens,
        estimated_cost_micros=price_of(request.provider, request.model).cost_micros(
            input_tokens, output_tokens
        ),
    )
