"""Fallback within the call, through the real agent-proxy service against the local provider
server: a failure before the first token sends the same Generate to the next configured model or
provider at once (its breaker counting the failure), a failure after it ends the call, the caller's
deadline ends the call rather than a fallback, and usage is metered once, for the model that answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import grpc
import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import principal_pb2, usage_pb2

from services.agent_proxy.fair_queue import FairQueue
from services.agent_proxy.generation import Generation
from services.agent_proxy.provider import ProviderEvent, ProviderFailure, Started, Turn
from services.agent_proxy.providers import Providers, sdk_provider
from services.agent_proxy.settings import ProviderConfig, ProxySettings
from services.provider_server.answers import compose_answer
from services.provider_server.server import RunningProviderServer
from services.runtime.principal import Principal
from services.runtime.settings import Env
from tests.agent_proxy.conftest import (
    Proxy,
    book,
    generate_request,
    provider_environ,
    refusal,
    running_proxy,
    texts,
)
from tests.agent_proxy.usage_topic import read_usage
from tests.tokens import TokenWorld

pytestmark = pytest.mark.integration

PROMPT = ["You are Ada.", "Grace: Hello, agents!"]


async def _failures(proxy: Proxy) -> dict[str, int]:
    listed = await proxy.stub.ListProviders(pb.ListProvidersRequest(), metadata=proxy.auth, timeout=5)
    return {f"{p.name}/{p.models[0]}": p.consecutive_failures for p in listed.providers}


async def test_the_first_call_to_a_failing_model_streams_the_fallbacks_answer(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "echo-1", "status=500")  # until cleared: echo-1 is down
    request = generate_request(proxy.tenant.tenant_id, in_conversation=False)

    responses = await proxy.generate(request)

    expected = compose_answer(PROMPT, 1024)
    assert texts(responses) == expected.text
    completion = responses[-1].completion
    assert completion.finish_reason == pb.FINISH_REASON_STOP
    assert (completion.usage.provider, completion.usage.model) == ("local", "echo-2")
    assert completion.usage.input_tokens == expected.input_tokens
    assert provider_server.state.requests == {"echo-1": 1, "echo-2": 1}
    failures = await _failures(proxy)
    assert failures["local/echo-1"] == 1
    assert failures["local/echo-2"] == 0
    # Metered once, for the model that answered; echo-1's failed attempt is not a turn.
    [record] = await read_usage(
        proxy.environ["MACP_KAFKA_BOOTSTRAP"],
        proxy.environ["MACP_KAFKA_USAGE_TOPIC"],
        until=1,
        tenant_id=proxy.tenant.tenant_id,
    )
    event = record.event
    assert event.type == usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN
    assert event.turn_id == request.turn_id
    assert (event.dimensions.provider, event.dimensions.model) == ("local", "echo-2")
    assert event.dimensions.output_tokens == completion.usage.output_tokens


@pytest.mark.parametrize(
    ("behavior", "provider", "model", "fallback"),
    [
        ("status=500", "local", "echo-1", ("local", "echo-2")),  # the next model
        ("status=529", "local", "echo-1", ("local", "echo-2")),
        ("status=503", "compat", "compat-1", ("local", "echo-1")),  # the next provider
        ("status=429", "compat", "compat-1", ("local", "echo-1")),
        ("status=529", "compat", "compat-1", ("local", "echo-1")),
        ("cut=0", "local", "echo-1", ("local", "echo-2")),  # the connection drops before any text
        ("malformed=0", "compat", "compat-1", ("local", "echo-1")),
    ],
)
async def test_a_failure_before_any_text_falls_back_at_once(
    proxy: Proxy,
    provider_server: RunningProviderServer,
    behavior: str,
    provider: str,
    model: str,
    fallback: tuple[str, str],
) -> None:
    await book(provider_server, model, behavior, times=1)
    responses = await proxy.generate(generate_request(proxy.tenant.tenant_id, provider=provider, model=model))
    assert texts(responses) == compose_answer(PROMPT, 1024).text
    usage = responses[-1].completion.usage
    assert (usage.provider, usage.model) == fallback
    assert provider_server.state.requests == {model: 1, fallback[1]: 1}
    assert (await _failures(proxy))[f"{provider}/{model}"] == 1


async def test_a_timeout_before_the_first_token_falls_back(
    service_environ: dict[str, str], tokens: TokenWorld, provider_server: RunningProviderServer
) -> None:
    environ = {
        **service_environ,
        **provider_environ(provider_server.base_url),
        "MACP_AGENT_PROXY_CALL_TIMEOUT_SECONDS": "0.5",
    }
    async with running_proxy(environ, tokens) as proxy:
        await book(provider_server, "echo-1", "slow=3", times=1)
        started = asyncio.get_running_loop().time()
        responses = await proxy.generate(generate_request(proxy.tenant.tenant_id), deadline=10)
        assert asyncio.get_running_loop().time() - started < 2.5  # echo-1's timeout, not its answer
        assert responses[-1].completion.usage.model == "echo-2"
        assert texts(responses) == compose_answer(PROMPT, 1024).text
        assert (await _failures(proxy))["local/echo-1"] == 1


async def test_a_failure_after_the_first_token_is_not_retried_anywhere(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "echo-1", "cut=4", times=1)
    responses = await proxy.generate(generate_request(proxy.tenant.tenant_id))
    # The caller has seen four tokens: the call ends with them and an error, no fallback repeats it.
    assert texts(responses) == "".join(list(compose_answer(PROMPT, 1024).pieces())[:4])
    assert responses[-1].completion.finish_reason == pb.FINISH_REASON_ERROR
    assert responses[-1].completion.usage.model == "echo-1"
    assert provider_server.state.requests == {"echo-1": 1}


async def test_a_deadline_shorter_than_the_primarys_timeout_ends_the_call_without_a_fallback(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "echo-1", "slow=5", times=1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.generate(generate_request(proxy.tenant.tenant_id), deadline=1.0)
    assert refusal(failed.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert asyncio.get_running_loop().time() - started < 3
    # Past the moment echo-1's own timeout (the deadline and a grace) would have fired: the call
    # ended at the deadline, and no fallback was started for a caller that is gone.
    await asyncio.sleep(1.0)
    assert provider_server.state.requests == {"echo-1": 1}


async def test_every_candidate_failing_is_unavailable_after_the_retries(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    for model in ("echo-1", "echo-2", "compat-1"):
        await book(provider_server, model, "status=503", times=3)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.generate(generate_request(proxy.tenant.tenant_id, provider="compat", model="compat-1"))
    assert refusal(failed.value) == grpc.StatusCode.UNAVAILABLE
    assert (failed.value.details() or "").startswith(
        "compat/compat-1 and its fallbacks failed before answering "
        "(9 attempts on compat/compat-1, local/echo-1, local/echo-2); the last: local answered HTTP 503"
    )
    # Each walk tried every candidate once, and there were three walks (one try, two retries).
    assert provider_server.state.requests == {"echo-1": 3, "echo-2": 3, "compat-1": 3}


async def test_when_every_candidate_failed_once_the_walk_is_retried_after_a_backoff(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    for model in ("echo-1", "echo-2", "compat-1"):
        await book(provider_server, model, "status=500", times=1)
    responses = await proxy.generate(generate_request(proxy.tenant.tenant_id))
    assert responses[-1].completion.usage.model == "echo-1"  # the second walk, from the first
    assert provider_server.state.requests == {"echo-1": 2, "echo-2": 1, "compat-1": 1}


class _ErrorEventBeforeContent:
    """Provider `local` as served, except that echo-1 accepts the call (and reports its prompt's
    tokens) and then sends an `error` event before any content, as an overloaded Anthropic does;
    the local provider server sends no such event, so the adapter's failure is raised here."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._served = sdk_provider(config)

    async def stream(self, model: str, turn: Turn, read_timeout: float) -> AsyncGenerator[ProviderEvent]:
        if model == "echo-1":
            yield Started(request_id="req_failed_attempt", input_tokens=999)
            overloaded = "local sent an error mid-answer: overloaded_error: Overloaded"
            raise ProviderFailure(overloaded, retryable=True)
        async for event in self._served.stream(model, turn, read_timeout):
            yield event

    async def close(self) -> None:
        await self._served.close()


async def test_an_error_event_before_content_falls_back_and_meters_only_the_answer(
    provider_server: RunningProviderServer,
) -> None:
    settings = ProxySettings.from_env(Env(provider_environ(provider_server.base_url)))
    providers = Providers(settings, time.time, make_provider=_ErrorEventBeforeContent)
    published: list[usage_pb2.UsageEvent] = []

    async def publish(event: usage_pb2.UsageEvent) -> None:
        published.append(event)

    generation = Generation(settings, providers, FairQueue(4, 10), publish)
    principal = Principal(tenant_id="acme", user_id="grace", tier=principal_pb2.TIER_PRO)
    try:
        request = generate_request("acme", in_conversation=False)
        responses = [r async for r in generation.generate(request, principal, 10.0)]
    finally:
        await providers.close()

    expected = compose_answer(PROMPT, 1024)
    assert texts(responses) == expected.text
    completion = responses[-1].completion
    assert (completion.usage.provider, completion.usage.model) == ("local", "echo-2")
    # Nothing of the failed attempt is in the answer's usage: not its tokens, not its request id.
    assert completion.usage.input_tokens == expected.input_tokens
    assert completion.provider_request_id != "req_failed_attempt"
    [event] = published
    assert (event.dimensions.model, event.dimensions.input_tokens) == ("echo-2", expected.input_tokens)
    assert providers.breaker("local", "echo-1").consecutive_failures == 1
    assert provider_server.state.requests == {"echo-2": 1}
