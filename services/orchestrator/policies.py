"""Turn policies: who speaks next in a round, and when the round ends.

A round answers one user message. Before each turn the conversation's policy looks at the round
so far and names the next speaker (with what to work on) or ends the round:

- ROUND_ROBIN: the agents the user @mentioned first, then the participants in their order, one
  turn each, cycling, until the turn limit; an agent that ends its answer with `[yield]` ends it.
- BID: every participant bids (the agent proxy scores it; clients may bid too); the highest score
  speaks, ties going to the earlier participant, a mention outranking any score; an agent does not
  speak twice in a row; no eligible bid ends the round.
- COORDINATOR (seed 004's orchestration pattern): the coordinator splits the question into one
  sub-question per specialist (`<name>: <question>` lines), each specialist answers its own, and the
  coordinator composes the answer from theirs.
- PIPELINE (seed 004's pipeline pattern): the participants in order, each working on the previous
  one's output.

One policy plans its whole round at once instead (`Choreography.speakers`):

- CHOREOGRAPHY: every participant bids once, as under BID; every one that does not decline speaks,
  all at the same time, each on the conversation up to the user's message (rounds.py runs the
  turns side by side). The turn limit keeps the best bids (a mention first, then the score, then
  the earlier participant); no eligible bid ends the round.

An agent whose turn fails (its provider, an outside A2A agent, an open breaker) does not end a
ROUND_ROBIN or BID round: the round goes on without it (it is not asked again in that round), and
only a round in which every turn failed ends FAILED. Under COORDINATOR and PIPELINE a failed turn
ends the round, as what comes after it would have nothing whole to work on. A turn refused for
quota or by the plan ends the round under every policy (rounds.py): the next would be refused
alike.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

Agent = conversation_pb.Agent
YIELD_MARKER = "[yield]"


@dataclass(frozen=True)
class TurnPlan:
    """The next turn: who speaks, under which turn id, and on what (None: the conversation itself)."""

    agent: Agent
    turn_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    instruction: str | None = None


@dataclass(frozen=True)
class RoundEnd:
    reason: pb.RoundEndReason.ValueType


@dataclass(frozen=True)
class Spoken:
    """A finished turn of this round."""

    agent_id: str
    text: str
    yielded: bool
    # The agent failed (its provider, its remote, its breaker): under ROUND_ROBIN and BID the
    # round goes on without it.
    failed: bool = False


@dataclass
class RoundView:
    """What a policy sees: the round's question, participants (in order), mentions, turns so far."""

    question: str
    participants: Sequence[Agent]
    mentions: Sequence[str]
    limit: int
    spoken: list[Spoken] = field(default_factory=list)
    # The id the round's first turn takes: fixed in advance, so that its quota hold could be asked
    # for with the round's own (preparation.py); "" draws one like any other.
    first_turn_id: str = ""

    def agent(self, agent_id: str) -> Agent | None:
        return next((a for a in self.participants if a.id == agent_id), None)

    def failed(self) -> set[str]:
        """The agents whose turn failed in this round: not asked again in it."""
        return {turn.agent_id for turn in self.spoken if turn.failed}

    def end_reason(self, reason: pb.RoundEndReason.ValueType) -> pb.RoundEndReason.ValueType:
        """`reason`, unless every turn of the round failed: then the round failed."""
        if self.spoken and all(turn.failed for turn in self.spoken):
            return pb.ROUND_END_REASON_FAILED
        return reason

    def new_turn_id(self) -> str:
        """The id of the turn being planned: the first turn's once, then fresh ones."""
        turn_id, self.first_turn_id = self.first_turn_id, ""
        return turn_id or str(uuid.uuid4())

    def plan(self, agent: Agent, instruction: str | None = None) -> TurnPlan:
        return TurnPlan(agent, self.new_turn_id(), instruction)


class Bidder(Protocol):
    """Runs the bidding of one turn: collects the bids, then announces the outcome."""

    async def collect(self, turn_id: str, agents: Sequence[Agent]) -> list[pb.Bid]: ...

    async def announce(self, turn_id: str, bids: Sequence[pb.Bid], winner: Agent | None) -> None: ...


def split_yield(text: str) -> tuple[str, bool]:
    """The answer without a trailing yield marker, and whether it had one."""
    stripped = text.rstrip()
    if stripped.endswith(YIELD_MARKER):
        return stripped[: -len(YIELD_MARKER)].rstrip(), True
    return text, False


class RoundRobin:
    # A failed turn does not end the round: the next agent in order speaks (failures_end_round).
    failures_end_round = False

    async def next_turn(self, view: RoundView) -> TurnPlan | RoundEnd:
        if view.spoken and view.spoken[-1].yielded:
            return RoundEnd(pb.ROUND_END_REASON_YIELDED)
        if len(view.spoken) >= view.limit:
            return RoundEnd(view.end_reason(pb.ROUND_END_REASON_TURN_LIMIT))
        order = _mentioned_first(view)
        failed = view.failed()
        # The agent whose place in the cycle it is, or the next one after it that has not failed.
        start = len(view.spoken) % len(order)
        for step in range(len(order)):
            agent = order[(start + step) % len(order)]
            if agent.id not in failed:
                return view.plan(agent)
        return RoundEnd(pb.ROUND_END_REASON_FAILED)


class Bidding:
    # A failed turn does not end the round: the others bid for the next turn, without the agent
    # that failed.
    failures_end_round = False

    def __init__(self, bidder: Bidder) -> None:
        self._bidder = bidder

    async def next_turn(self, view: RoundView) -> TurnPlan | RoundEnd:
        if view.spoken and view.spoken[-1].yielded:
            return RoundEnd(pb.ROUND_END_REASON_YIELDED)
        if len(view.spoken) >= view.limit:
            return RoundEnd(view.end_reason(pb.ROUND_END_REASON_TURN_LIMIT))
        failed = view.failed()
        bidders = [agent for agent in view.participants if agent.id not in failed]
        if not bidders:
            return RoundEnd(pb.ROUND_END_REASON_FAILED)
        turn_id = view.new_turn_id()
        bids = await self._bidder.collect(turn_id, bidders)
        winner = choose_winner(view, bids)
        await self._bidder.announce(turn_id, bids, winner)
        if winner is None:
            return RoundEnd(view.end_reason(pb.ROUND_END_REASON_NO_BIDDER))
        return TurnPlan(winner, turn_id)


def choose_winner(view: RoundView, bids: Sequence[pb.Bid]) -> Agent | None:
    """The bid that speaks: not declined, at least the agent's own minimum score, not the agent that
    just spoke (unless it is the only participant); a mention first, then the score, then the
    earlier participant. Deterministic for the same bids."""
    last = view.spoken[-1].agent_id if view.spoken else None
    ranked = _ranked(view, bids, last if len(view.participants) > 1 else None)
    return ranked[0] if ranked else None


def choose_speakers(view: RoundView, bids: Sequence[pb.Bid]) -> list[Agent]:
    """Every agent whose bid stands (as for `choose_winner`, but nobody is left out for having just
    spoken: they all answer the same message), best first. Deterministic for the same bids."""
    return _ranked(view, bids, None)


def _ranked(view: RoundView, bids: Sequence[pb.Bid], excluded: str | None) -> list[Agent]:
    """The agents of the bids that stand, best first: not declined, at least the agent's own
    minimum score, not `excluded`; a mention first, then the score, then the earlier participant."""
    order = {agent.id: index for index, agent in enumerate(view.participants)}
    best: dict[str, pb.Bid] = {}
    for bid in bids:
        agent = view.agent(bid.agent_id)
        if agent is None or bid.declined or bid.agent_id == excluded:
            continue
        minimum = agent.bidding.min_score if agent.bidding.HasField("min_score") else 0.0
        if bid.score < minimum:
            continue
        # A client's bid for an agent replaces the proxy's: the client knows something it does not.
        kept = best.get(bid.agent_id)
        if kept is None or bid.source == pb.BID_SOURCE_CLIENT:
            best[bid.agent_id] = bid
    mentioned = set(view.mentions)
    ranked = sorted(best, key=lambda a: (a not in mentioned, -best[a].score, order[a]))
    return [agent for agent_id in ranked if (agent := view.agent(agent_id)) is not None]


@dataclass(frozen=True)
class Ensemble:
    """The turns a CHOREOGRAPHY round runs at once, and whether the turn limit left a speaker out."""

    plans: list[TurnPlan]
    limited: bool


class Choreography:
    def __init__(self, bidder: Bidder) -> None:
        self._bidder = bidder

    async def speakers(self, view: RoundView) -> Ensemble | RoundEnd:
        """Everyone bids once; the bids that stand speak, up to the turn limit. The best one takes
        the bidding's turn id: the round's first turn, whose quota hold is already asked for."""
        turn_id = view.new_turn_id()
        bids = await self._bidder.collect(turn_id, view.participants)
        chosen = choose_speakers(view, bids)
        await self._bidder.announce(turn_id, bids, chosen[0] if chosen else None)
        if not chosen:
            return RoundEnd(pb.ROUND_END_REASON_NO_BIDDER)
        first, *others = chosen[: view.limit]
        plans = [TurnPlan(first, turn_id), *(view.plan(agent) for agent in others)]
        return Ensemble(plans, limited=len(chosen) > view.limit)


class Coordinator:
    # The coordinator composes from every specialist's answer: a failure leaves it nothing whole.
    failures_end_round = True

    def __init__(self, coordinator_id: str) -> None:
        self._coordinator_id = coordinator_id
        self._assignments: list[tuple[Agent, str]] | None = None

    async def next_turn(self, view: RoundView) -> TurnPlan | RoundEnd:
        coordinator = view.agent(self._coordinator_id) or view.participants[0]
        specialists = [a for a in view.participants if a.id != coordinator.id]
        step = len(view.spoken)
        if step == 0:
            if not specialists or view.limit < 3:
                return view.plan(coordinator)  # nobody to delegate to, or no room: it answers itself
            return view.plan(coordinator, plan_instruction(view.question, specialists))
        if self._assignments is None:
            if not specialists or view.limit < 3:
                return RoundEnd(pb.ROUND_END_REASON_COMPLETED)
            assigned = parse_assignments(view.spoken[0].text, specialists, view.question)
            self._assignments = assigned[: view.limit - 2]
        if step <= len(self._assignments):
            agent, question = self._assignments[step - 1]
            return view.plan(agent, f"The coordinator asks you: {question}")
        if step == len(self._assignments) + 1:
            answers = view.spoken[1:]
            return view.plan(coordinator, compose_instruction(view, answers))
        return RoundEnd(pb.ROUND_END_REASON_COMPLETED)


def plan_instruction(question: str, specialists: Sequence[Agent]) -> str:
    roster = "\n".join(
        f"- {a.name}" + (f" ({', '.join(a.capabilities)})" if a.capabilities else "") for a in specialists
    )
    return (
        f"You coordinate these specialists:\n{roster}\n\nBreak the user's request into one "
        "sub-question per specialist who can help, one line each, as `<name>: <sub-question>`.\n\n"
        f"The request: {question}"
    )


def compose_instruction(view: RoundView, answers: Sequence[Spoken]) -> str:
    parts = []
    for spoken in answers:
        agent = view.agent(spoken.agent_id)
        parts.append(f"[{agent.name if agent else spoken.agent_id}]: {spoken.text}")
    joined = "\n\n".join(parts)
    return f"Compose one answer to the user's request from the specialists' answers.\n\n{joined}"


_ASSIGNMENT = re.compile(r"^\s*(?:[-*]\s*)?@?(?P<name>[^:\n]{1,100}?)\s*:\s*(?P<question>\S.*)$")


def parse_assignments(plan: str, specialists: Sequence[Agent], question: str) -> list[tuple[Agent, str]]:
    """The coordinator's `<name>: <sub-question>` lines for known specialists, in its order; if it
    named none, every specialist gets the user's question."""
    by_name = {a.name.casefold(): a for a in specialists}
    assigned: list[tuple[Agent, str]] = []
    seen: set[str] = set()
    for line in plan.splitlines():
        match = _ASSIGNMENT.match(line)
        if match is None:
            continue
        agent = by_name.get(match.group("name").strip().strip("*`").casefold())
        if agent is not None and agent.id not in seen:
            seen.add(agent.id)
            assigned.append((agent, match.group("question").strip()))
    return assigned or [(agent, question) for agent in specialists]


class Pipeline:
    # Each stage works on the one before: a failed stage leaves the next nothing to work on.
    failures_end_round = True

    async def next_turn(self, view: RoundView) -> TurnPlan | RoundEnd:
        step = len(view.spoken)
        if step >= len(view.participants):
            return RoundEnd(pb.ROUND_END_REASON_COMPLETED)
        if step >= view.limit:
            return RoundEnd(pb.ROUND_END_REASON_TURN_LIMIT)
        if step == 0:
            return view.plan(view.participants[0])
        previous = view.spoken[-1].text
        return view.plan(
            view.participants[step], f"Work on the previous stage's output and give yours:\n\n{previous}"
        )


def _mentioned_first(view: RoundView) -> list[Agent]:
    mentioned = [a for mention in view.mentions if (a := view.agent(mention)) is not None]
    return mentioned + [a for a in view.participants if a.id not in set(view.mentions)]


Policy = RoundRobin | Bidding | Coordinator | Pipeline | Choreography


def policy_for(conversation: conversation_pb.Conversation, bidder: Bidder) -> Policy:
    match conversation.turn_policy:
        case conversation_pb.TURN_POLICY_BID:
            return Bidding(bidder)
        case conversation_pb.TURN_POLICY_CHOREOGRAPHY:
            return Choreography(bidder)
        case conversation_pb.TURN_POLICY_COORDINATOR:
            return Coordinator(conversation.coordinator_agent_id)
        case conversation_pb.TURN_POLICY_PIPELINE:
            return Pipeline()
        case _:
            return RoundRobin()


def turn_limit(conversation: conversation_pb.Conversation, participants: int, default: int) -> int:
    """The conversation's limit, else the deployment's default, else what the policy needs."""
    if conversation.limits.max_agent_turns_per_user_message:
        return conversation.limits.max_agent_turns_per_user_message
    if default:
        return default
    if conversation.turn_policy == conversation_pb.TURN_POLICY_COORDINATOR:
        return participants + 1  # the plan, one per specialist, the composed answer
    return participants
