"""gRPC surface of the agent proxy: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.duration_pb2 import Duration
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as pb_grpc

from services.agent_proxy.bidding import bid
from services.agent_proxy.generation import Generation
from services.agent_proxy.providers import Providers
from services.agent_proxy.remote_agents import A2A
from services.agent_proxy.settings import ProxySettings
from services.agent_proxy.speech import Speech
from services.runtime.breaker import BreakerState
from services.runtime.context import RpcContext
from services.runtime.errors import Unimplemented
from services.runtime.principal import current_principal
from services.runtime.protos import timestamp_at

BREAKER_STATES = {
    BreakerState.CLOSED: pb.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: pb.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
}


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class AgentProxyServicer(pb_grpc.AgentProxyServiceServicer):
    def __init__(
        self,
        settings: ProxySettings,
        providers: Providers,
        generation: Generation,
        speech: Speech | None = None,
    ) -> None:
        self._settings = settings
        self._providers = providers
        self._generation = generation
        self._speech = speech

    async def Generate(
        self, request: pb.GenerateRequest, context: RpcContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        async for response in self._generation.generate(
            request, current_principal(), context.time_remaining()
        ):
            yield response

    async def Synthesize(
        self, request: pb.SynthesizeRequest, context: RpcContext
    ) -> AsyncIterator[pb.SynthesizeResponse]:
        async for response in self._voice().synthesize(
            request, current_principal(), context.time_remaining()
        ):
            yield response

    async def Transcribe(
        self, request: pb.TranscribeRequest, context: RpcContext
    ) -> AsyncIterator[pb.TranscribeResponse]:
        async for response in self._voice().transcribe(
            request, current_principal(), context.time_remaining()
        ):
            yield response

    def _voice(self) -> Speech:
        if self._speech is None:
            raise Unimplemented("this agent proxy was built without speech")
        return self._speech

    async def Bid(self, request: pb.BidRequest, context: RpcContext) -> pb.BidResponse:
        """From the agent's hints alone, for an outside A2A agent too: a bid never calls it."""
        if request.provider != A2A:
            self._providers.require(request.provider)
        return bid(request, self._settings.default_max_tokens)

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: RpcContext
    ) -> pb.ListProvidersResponse:
        """One entry per provider and model, so each model's own breaker shows (they open apart)."""
        statuses = []
        for config, model, breaker in self._providers.pairs_with_breakers():
            state = breaker.state
            status = pb.ProviderStatus(
                name=config.name,
                models=[model],
                configured=config.configured,
                local=config.local,
                breaker_state=BREAKER_STATES[state],
                consecutive_failures=breaker.consecutive_failures,
                failure_threshold=breaker.policy.failure_threshold,
                call_timeout=_duration(self._settings.call_timeout_seconds),
                open_duration=_duration(breaker.policy.open_seconds),
            )
            if breaker.opened_at is not None:
                status.open_time.CopyFrom(timestamp_at(breaker.opened_at))
            if state is BreakerState.OPEN:
                status.next_attempt_time.CopyFrom(timestamp_at(breaker.next_attempt_at()))
            statuses.append(status)
        return pb.ListProvidersResponse(providers=statuses)
