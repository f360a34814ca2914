"""Generate through the real agent-proxy service, over real tokens, against the local provider
server through the official anthropic (provider `local`) and openai (provider `compat`) SDKs: the
text, the deltas, the completion and its usage, every injected fault, and clear refusals."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.provider_server.answers import compose_answer
from services.provider_server.server import RunningProviderServer
from tests.agent_proxy.conftest import Proxy, book, generate_request, refusal, texts

pytestmark = pytest.mark.integration

PROMPT = ["You are Ada.", "Grace: Hello, agents!"]


@pytest.mark.parametrize(("provider", "model"), [("local", "echo-1"), ("compat", "compat-1")])
async def test_generate_streams_the_answer_then_one_completion(
    proxy: Proxy, provider: str, model: str
) -> None:
    responses = await proxy.generate(generate_request(proxy.tenant.tenant_id, provider=provider, model=model))

    *deltas, last = responses
    expected = compose_answer(PROMPT, 1024)
    assert texts(responses) == expected.text
    assert [d.text_delta.index for d in deltas] == list(range(len(deltas)))
    assert last.HasField("completion")
    completion = last.completion
    assert completion.finish_reason == pb.FINISH_REASON_STOP
    assert completion.usage.input_tokens == expected.input_tokens
    assert completion.usage.output_tokens == expected.output_tokens
    assert not completion.usage.estimated
    assert (completion.usage.provider, completion.usage.model) == (provider, model)
    assert completion.provider_request_id.startswith("req_")


async def test_max_tokens_truncates_and_says_so(proxy: Proxy) -> None:
    responses = await proxy.generate(generate_request(proxy.tenant.tenant_id, max_tokens=3))
    assert len(texts(responses).split()) == 3
    assert responses[-1].completion.finish_reason == pb.FINISH_REASON_MAX_TOKENS
    assert responses[-1].completion.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("behavior", "provider", "model"), [("cut=4", "local", "echo-1"), ("malformed=4", "compat", "compat-1")]
)
async def test_a_stream_broken_after_text_ends_with_an_error_and_estimated_usage(
    proxy: Proxy, provider_server: RunningProviderServer, behavior: str, provider: str, model: str
) -> None:
    await book(provider_server, model, behavior, times=1)
    responses = await proxy.generate(generate_request(proxy.tenant.tenant_id, provider=provider, model=model))
    expected = compose_answer(PROMPT, 1024)
    # What was streamed stays (no retry repeats it): the first four tokens, then the error.
    assert texts(responses) == "".join(list(expected.pieces())[:4])
    completion = responses[-1].completion
    assert completion.finish_reason == pb.FINISH_REASON_ERROR
    assert completion.usage.estimated
    assert completion.usage.output_tokens > 0
    assert provider_server.state.requests[model] == 1


async def test_a_refused_request_names_the_problem_and_never_the_key(
    proxy: Proxy, provider_server: RunningProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await book(provider_server, "compat-1", "status=400", times=1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await proxy.generate(generate_request(proxy.tenant.tenant_id, provider="compat", model="compat-1"))
    assert refusal(refused.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "HTTP 400" in (refused.value.details() or "")
    assert provider_server.state.requests["compat-1"] == 1  # a bad request is not retried
    secret = proxy.environ["MACP_PROVIDER_COMPAT_API_KEY"]
    assert secret not in (refused.value.details() or "")
    assert secret not in caplog.text


async def test_bad_requests_are_refused_clearly(proxy: Proxy) -> None:
    tenant = proxy.tenant.tenant_id
    cases = [
        (generate_request(tenant, provider="nope"), grpc.StatusCode.INVALID_ARGUMENT, "provider: 'nope'"),
        (generate_request("someone-else"), grpc.StatusCode.PERMISSION_DENIED, "tenant_id"),
        (pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "turn_id"),
    ]
    for request, code, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await proxy.generate(request)
        assert refusal(refused.value) == code
        assert words in (refused.value.details() or "")


async def test_generate_needs_the_generate_scope(proxy: Proxy) -> None:
    token = await proxy.tokens.user_token(
        proxy.tenant, ["urn:macp:service:agent-proxy"], "conversations:read"
    )
    call = proxy.stub.Generate(
        generate_request(proxy.tenant.tenant_id), metadata=(("authorization", f"Bearer {token}"),)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [r async for r in call]
    assert refusal(refused.value) == grpc.StatusCode.PERMISSION_DENIED
    assert "agents:generate" in (refused.value.details() or "")


async def test_a_slow_reader_gets_the_same_text_in_fewer_messages(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    await book(provider_server, "echo-2", "tokens=400", times=1)
    call = proxy.stub.Generate(
        generate_request(proxy.tenant.tenant_id, model="echo-2", max_tokens=1000),
        metadata=proxy.auth,
        timeout=20,
    )
    first = await call.read()
    assert isinstance(first, pb.GenerateResponse)
    await asyncio.sleep(0.5)  # the provider streams its 400 tokens meanwhile
    responses: list[pb.GenerateResponse] = [first]
    while (response := await call.read()) is not grpc.aio.EOF:
        assert isinstance(response, pb.GenerateResponse)
        responses.append(response)
    expected = compose_answer(PROMPT, 1000, exact_tokens=400)
    assert texts(responses) == expected.text  # nothing reordered, nothing lost
    deltas = [r for r in responses if r.HasField("text_delta")]
    assert len(deltas) < 400 / 4  # coalesced
    assert [d.text_delta.index for d in deltas] == list(range(len(deltas)))
    assert responses[-1].completion.usage.output_tokens == 400
