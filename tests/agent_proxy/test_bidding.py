"""Bid: deterministic scores from keywords, capabilities, eagerness and recency; cost estimates from
list prices; validation and scope through the real service."""

from __future__ import annotations

import grpc
import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.agent_proxy.bidding import bid
from tests.agent_proxy.conftest import Proxy, refusal

USER, ASSISTANT = pb.CHAT_ROLE_USER, pb.CHAT_ROLE_ASSISTANT


def _request(
    text: str,
    *,
    history: list[pb.ChatMessage] | None = None,
    eagerness: float | None = None,
    provider: str = "anthropic",
    model: str = "claude-sonnet-4-5",
) -> pb.BidRequest:
    request = pb.BidRequest(
        turn_id="5a0e2e1b-6f52-4f71-9d7e-2f1f8a5f4a10",
        conversation_id="2b7c1f0e-3d4a-4c5b-8e9f-0a1b2c3d4e5f",
        agent_id="9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        tenant_id="acme",
        provider=provider,
        model=model,
        system_prompt="You are Ada, a careful database engineer.",
        capabilities=["sql", "code-review"],
        messages=[*(history or []), pb.ChatMessage(role=USER, text=text)],
    )
    request.bidding.keywords.extend(["postgres", "index", "query plan"])
    if eagerness is not None:
        request.bidding.eagerness = eagerness
    return request


def test_keywords_and_capabilities_raise_the_score() -> None:
    on_topic = bid(_request("Why does Postgres ignore my index? The query plan shows a seq scan."), 1024)
    capability = bid(_request("Could someone do a code review of this?"), 1024)
    off_topic = bid(_request("What a lovely day for a picnic."), 1024)
    # All three keywords: relevance 1; eagerness 0.5 by default; never spoke: recency 1.
    assert on_topic.score == pytest.approx(0.6 + 0.125 + 0.15)
    assert "matched postgres, index, query plan" in on_topic.rationale
    assert capability.score == pytest.approx(0.6 * 0.8 * 0.5 + 0.125 + 0.15)
    assert off_topic.score == pytest.approx(0.125 + 0.15)
    assert on_topic.score > capability.score > off_topic.score
    assert (
        bid(_request("Why does Postgres ignore my index? The query plan shows a seq scan."), 1024) == on_topic
    )


def test_an_agent_that_just_spoke_bids_lower_and_min_score_declines() -> None:
    just_spoke = [pb.ChatMessage(role=ASSISTANT, text="I think it is the index.")]
    long_ago = [pb.ChatMessage(role=ASSISTANT, text="Hi."), *[pb.ChatMessage(role=USER, text="ok")] * 4]
    assert bid(_request("postgres?", history=just_spoke), 1024).score == pytest.approx(0.2 + 0.125 + 0.0375)
    assert bid(_request("postgres?", history=long_ago), 1024).score == pytest.approx(0.2 + 0.125 + 0.15)
    shy = _request("What a lovely day.", eagerness=0.0)
    shy.bidding.min_score = 0.3
    answer = bid(shy, 1024)
    assert answer.declined
    assert answer.score == pytest.approx(0.15)


def test_the_cost_estimate_uses_list_prices_and_max_tokens() -> None:
    request = _request("x" * 400)
    request.generation.max_tokens = 500
    answer = bid(request, 1024)
    prompt_characters = len(request.system_prompt) + 400
    assert answer.estimated_input_tokens == round(prompt_characters / 4)
    assert answer.estimated_output_tokens == 500
    # claude-sonnet: $3 / $15 per million tokens = 3 and 15 micro-dollars per token.
    assert answer.estimated_cost_micros == answer.estimated_input_tokens * 3 + 500 * 15
    local = _request("hi", provider="local", model="echo-1")
    assert bid(local, 1024).estimated_cost_micros == 0
    assert bid(local, 1024).estimated_output_tokens == 1024


@pytest.mark.integration
async def test_bid_through_the_service(proxy: Proxy) -> None:
    request = _request("Postgres index question", provider="local", model="echo-1")
    request.tenant_id = proxy.tenant.tenant_id
    answer = await proxy.stub.Bid(request, metadata=proxy.auth, timeout=10)
    assert answer == bid(request, 1024)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await proxy.stub.Bid(pb.BidRequest(), metadata=proxy.auth, timeout=10)
    assert refusal(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = _request("hi", provider="nope", model="m")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await proxy.stub.Bid(unknown, metadata=proxy.auth, timeout=10)
    assert refusal(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
