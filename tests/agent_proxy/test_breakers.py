"""Circuit breakers with a hand-moved clock: closed → open → fallback served → half-open → closed,
through the real SDK code paths against the local provider server, and ListProviders showing it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import principal_pb2, usage_pb2

from services.agent_proxy.fair_queue import FairQueue
from services.agent_proxy.generation import Generation
from services.agent_proxy.providers import Providers
from services.agent_proxy.servicer import AgentProxyServicer
from services.agent_proxy.settings import ProxySettings
from services.provider_server.server import RunningProviderServer
from services.runtime.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from services.runtime.errors import Unavailable
from services.runtime.principal import Principal
from services.runtime.settings import Env
from services.runtime.usage_ids import agent_turn_event_id
from tests.agent_proxy.conftest import book, generate_request, provider_environ

PRINCIPAL = Principal(tenant_id="acme", user_id="grace", tier=principal_pb2.TIER_PRO)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # read afresh: the clock moves it


def test_the_breaker_walks_its_states_on_the_clock() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=5, open_seconds=60), clock)
    for _ in range(4):
        assert breaker.try_acquire()
        breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED
    breaker.record_success()  # consecutive failures only
    for _ in range(5):
        breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN
    assert not breaker.try_acquire()
    clock.now += 59.9
    assert _state(breaker) is BreakerState.OPEN
    clock.now += 0.1
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.try_acquire()  # the one trial
    assert not breaker.try_acquire()
    breaker.record_failure()  # the trial failed: open for another period
    assert _state(breaker) is BreakerState.OPEN
    clock.now += 60
    assert breaker.try_acquire()
    breaker.release()  # a cancelled trial gives its slot back
    assert breaker.try_acquire()
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


@pytest.fixture
async def domain(
    provider_server: RunningProviderServer,
) -> AsyncIterator[tuple[Generation, AgentProxyServicer, Clock, list[usage_pb2.UsageEvent]]]:
    clock = Clock()
    settings = ProxySettings.from_env(Env(provider_environ(provider_server.base_url)))
    providers = Providers(settings, clock)
    published: list[usage_pb2.UsageEvent] = []

    async def publish(event: usage_pb2.UsageEvent) -> None:
        published.append(event)

    async def no_wait(seconds: float) -> None:
        return None

    generation = Generation(settings, providers, FairQueue(4, 10), publish, sleep=no_wait)
    try:
        yield generation, AgentProxyServicer(settings, providers, generation), clock, published
    finally:
        await providers.close()


async def _answer(generation: Generation, model: str = "echo-1") -> pb.GenerateCompletion:
    # Turns outside a conversation (chat completions): the ones the agent proxy bills itself.
    request = generate_request("acme", model=model, in_conversation=False)
    responses = [r async for r in generation.generate(request, PRINCIPAL, None)]
    return responses[-1].completion


async def _states(servicer: AgentProxyServicer) -> dict[str, pb.ProviderStatus]:
    listed = await servicer.ListProviders(pb.ListProvidersRequest(), None)  # type: ignore[arg-type]
    return {f"{p.name}/{p.models[0]}": p for p in listed.providers}


async def test_closed_open_fallback_half_open_closed(
    domain: tuple[Generation, AgentProxyServicer, Clock, list[usage_pb2.UsageEvent]],
    provider_server: RunningProviderServer,
) -> None:
    generation, servicer, clock, published = domain
    await book(provider_server, "echo-1", "status=529", times=5)

    # Each call's attempt on echo-1 fails and the same call falls back to echo-2 at once; the
    # failures still count, and the fifth opens echo-1's breaker.
    for failures in range(1, 6):
        served = await _answer(generation)
        assert served.finish_reason == pb.FINISH_REASON_STOP
        assert (served.usage.provider, served.usage.model) == ("local", "echo-2")
        assert (await _states(servicer))["local/echo-1"].consecutive_failures == failures
    assert provider_server.state.requests["echo-1"] == 5
    states = await _states(servicer)
    opened = states["local/echo-1"]
    assert opened.breaker_state == pb.BREAKER_STATE_OPEN
    assert opened.consecutive_failures == 5
    assert opened.failure_threshold == 5
    assert opened.open_duration.seconds == 60
    assert opened.call_timeout.seconds == 30
    assert opened.next_attempt_time.seconds == int(clock.now) + 60
    assert states["local/echo-2"].breaker_state == pb.BREAKER_STATE_CLOSED
    assert states["compat/compat-1"].configured
    assert not states["compat/compat-1"].local

    # While open, echo-1 is not even called: fallback serves at once.
    before = provider_server.state.requests["echo-1"]
    assert (await _answer(generation)).usage.model == "echo-2"
    assert provider_server.state.requests["echo-1"] == before

    clock.now += 60
    assert (await _states(servicer))["local/echo-1"].breaker_state == pb.BREAKER_STATE_HALF_OPEN
    trial = await _answer(generation)  # the trial goes to echo-1, which has recovered
    assert trial.usage.model == "echo-1"
    closed = (await _states(servicer))["local/echo-1"]
    assert closed.breaker_state == pb.BREAKER_STATE_CLOSED
    assert closed.consecutive_failures == 0
    assert closed.open_time.seconds == int(clock.now) - 60  # when it last opened
    # One usage event per Generate, for the model that answered it: echo-1's failed attempts
    # used nothing and are not metered.
    assert [e.dimensions.model for e in published] == ["echo-2"] * 6 + ["echo-1"]
    assert all(e.dimensions.output_tokens > 0 for e in published)
    # Each event's id derives from its turn, so the orchestrator's Commit of the same turn and this
    # copy are one row in metering.
    assert [e.event_id for e in published] == [agent_turn_event_id(e.turn_id) for e in published]
    assert len({e.event_id for e in published}) == 7


async def test_every_breaker_open_is_unavailable_naming_the_next_trial(
    domain: tuple[Generation, AgentProxyServicer, Clock, list[usage_pb2.UsageEvent]],
    provider_server: RunningProviderServer,
) -> None:
    generation, _, _, _ = domain
    for model in ("echo-1", "echo-2", "compat-1"):
        await book(provider_server, model, "status=500")
    for _ in range(5):
        with pytest.raises(Unavailable):
            await _answer(generation)
    with pytest.raises(
        Unavailable, match="every fallback have an open circuit breaker; the next trial is at"
    ):
        await _answer(generation)
