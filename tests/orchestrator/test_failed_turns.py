"""A failed turn under ROUND_ROBIN and BID: the round goes on without the agent that failed, and
fails only when every turn did (the policies alone, no mesh; the live case is an outside A2A agent
failing: tests/agent_proxy/test_a2a_remote.py)."""

from __future__ import annotations

from collections.abc import Sequence

from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.policies import (
    Bidding,
    RoundEnd,
    RoundRobin,
    RoundView,
    Spoken,
    TurnPlan,
)

AGENTS = [conversation_pb.Agent(id=f"agent-{name}", name=name) for name in ("ada", "bea", "cy")]


def _view(limit: int = 5, spoken: Sequence[Spoken] = ()) -> RoundView:
    return RoundView(question="q", participants=AGENTS, mentions=[], limit=limit, spoken=list(spoken))


def _failed(agent: conversation_pb.Agent) -> Spoken:
    return Spoken(agent.id, "", yielded=False, failed=True)


def _said(agent: conversation_pb.Agent) -> Spoken:
    return Spoken(agent.id, "an answer", yielded=False)


class _Bids:
    """Every agent asked bids; the earlier participant scores higher."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    async def collect(self, turn_id: str, agents: Sequence[conversation_pb.Agent]) -> list[pb.Bid]:
        self.asked.append([agent.id for agent in agents])
        return [pb.Bid(agent_id=agent.id, score=1.0 - index / 10) for index, agent in enumerate(agents)]

    async def announce(
        self, turn_id: str, bids: Sequence[pb.Bid], winner: conversation_pb.Agent | None
    ) -> None:
        return None


async def test_round_robin_skips_an_agent_that_failed_and_fails_when_all_did() -> None:
    ada, bea, cy = AGENTS
    policy = RoundRobin()
    assert not policy.failures_end_round
    plan = await policy.next_turn(_view(spoken=[_said(ada), _failed(bea)]))
    assert isinstance(plan, TurnPlan)
    assert plan.agent.id == cy.id
    # The cycle comes back round to the one that failed: the next after it speaks instead.
    plan = await policy.next_turn(_view(spoken=[_failed(ada), _said(bea), _said(cy)]))
    assert isinstance(plan, TurnPlan)
    assert plan.agent.id == bea.id
    assert await policy.next_turn(_view(spoken=[_failed(ada), _failed(bea), _failed(cy)])) == RoundEnd(
        pb.ROUND_END_REASON_FAILED
    )
    # At the turn limit, a round with an answer ends as usual; one with none failed.
    assert await policy.next_turn(_view(limit=2, spoken=[_failed(ada), _said(bea)])) == RoundEnd(
        pb.ROUND_END_REASON_TURN_LIMIT
    )
    assert await policy.next_turn(_view(limit=2, spoken=[_failed(ada), _failed(bea)])) == RoundEnd(
        pb.ROUND_END_REASON_FAILED
    )


async def test_bidding_asks_only_the_agents_that_have_not_failed() -> None:
    ada, bea, cy = AGENTS
    bids = _Bids()
    policy = Bidding(bids)
    plan = await policy.next_turn(_view(spoken=[_failed(ada)]))
    assert isinstance(plan, TurnPlan)
    assert plan.agent.id == bea.id
    assert bids.asked == [[bea.id, cy.id]]
    assert await policy.next_turn(_view(spoken=[_failed(ada), _failed(bea), _failed(cy)])) == RoundEnd(
        pb.ROUND_END_REASON_FAILED
    )
