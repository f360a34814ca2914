"""The BID policy's bidding for one round: the agent proxy's bids and clients', then the results."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.downstream import Downstream, acting
from services.orchestrator.policies import Agent
from services.orchestrator.transcript import Said, chat_messages
from services.runtime.auth.caller_tokens import acting_agent
from services.runtime.protos import now_timestamp

if TYPE_CHECKING:
    from services.orchestrator.rounds import RoundState

log = logging.getLogger("macp.orchestrator.bidding")

MAX_BID_MESSAGES = 50


class Bidder:
    """The BID policy's bidding for one round: the agent proxy's bids and clients', then results."""

    def __init__(
        self,
        downstream: Downstream,
        window: float,
        state: RoundState,
        emit: Callable[[pb.ConversationEvent], Awaitable[None]],
        history: Sequence[Said],
        names: dict[str, str],
    ) -> None:
        self._downstream = downstream
        self._window = window
        self._state = state
        self._emit = emit
        self._history = history
        self._names = names

    async def collect(self, turn_id: str, agents: Sequence[Agent]) -> list[pb.Bid]:
        window = self._window
        deadline = now_timestamp()
        deadline.FromNanoseconds(deadline.ToNanoseconds() + int(window * 1e9))
        self._state.bidding_turn, self._state.client_bids = turn_id, []
        await self._emit(
            pb.ConversationEvent(
                bidding_opened=pb.BiddingOpened(
                    turn_id=turn_id, agent_ids=[a.id for a in agents], deadline=deadline
                )
            )
        )
        tasks = [asyncio.create_task(self._proxy_bid(turn_id, agent, window)) for agent in agents]
        try:
            done, _pending = await asyncio.wait(tasks, timeout=window)
        finally:
            for task in tasks:
                task.cancel()
        bids = [bid for task in done if (bid := task.result()) is not None]
        bids += [bid for bid in self._state.client_bids if bid.agent_id in self._names]
        self._state.bidding_turn = ""
        return bids

    async def announce(self, turn_id: str, bids: Sequence[pb.Bid], winner: Agent | None) -> None:
        ranked = sorted(bids, key=lambda bid: -bid.score)
        await self._emit(
            pb.ConversationEvent(
                bid_results=pb.BidResults(
                    turn_id=turn_id, bids=ranked, winner_agent_id=winner.id if winner is not None else ""
                )
            )
        )

    async def _proxy_bid(self, turn_id: str, agent: Agent, window: float) -> pb.Bid | None:
        downstream = self._downstream
        job = self._state.job
        messages = chat_messages(self._history, agent.id, self._names)[-MAX_BID_MESSAGES:]
        if messages and messages[0].role != proxy_pb.CHAT_ROLE_USER:
            messages = messages[1:]
        try:
            with acting_agent(acting(agent)):
                reply = await downstream.agent_proxy.Bid(
                    proxy_pb.BidRequest(
                        turn_id=turn_id,
                        conversation_id=job.conversation_id,
                        agent_id=agent.id,
                        tenant_id=job.caller.principal.tenant_id,
                        provider=agent.provider,
                        model=agent.model,
                        system_prompt=agent.system_prompt,
                        capabilities=list(agent.capabilities),
                        bidding=agent.bidding,
                        messages=messages,
                        generation=agent.generation,
                    ),
                    timeout=window,
                )
        except grpc.aio.AioRpcError as exc:
            log.warning("bid of agent %s failed: %s %s", agent.id, exc.code().name, exc.details())
            return None
        return pb.Bid(
            agent_id=agent.id,
            score=reply.score,
            declined=reply.declined,
            rationale=reply.rationale,
            estimated_cost_micros=reply.estimated_cost_micros,
            source=pb.BID_SOURCE_AGENT_PROXY,
        )
