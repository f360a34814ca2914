"""Every fault the local provider server injects, as the official SDKs see it: HTTP 429, 500 and
529, a slow first byte, a stream cut mid-way, a malformed chunk; per request (header) or booked
per model for the next requests another process sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import anthropic
import httpx
import openai
import pytest

from services.provider_server.server import RunningProviderServer

Stream = Callable[[str], Awaitable[AsyncIterator[str]]]


def _anthropic_stream(client: anthropic.AsyncAnthropic) -> Stream:
    async def texts(behavior: str) -> AsyncIterator[str]:
        stream = await client.messages.create(
            model="local-1",
            max_tokens=50,
            messages=[{"role": "user", "content": "tell me a story"}],
            stream=True,
            extra_headers={"x-macp-behavior": behavior},
            timeout=0.5,
        )

        async def pieces() -> AsyncIterator[str]:
            try:
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        yield event.delta.text
            finally:
                await stream.close()

        return pieces()

    return texts


def _openai_stream(client: openai.AsyncOpenAI) -> Stream:
    async def texts(behavior: str) -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model="local-1",
            messages=[{"role": "user", "content": "tell me a story"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-macp-behavior": behavior},
            timeout=0.5,
        )

        async def pieces() -> AsyncIterator[str]:
            try:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
            finally:
                await stream.close()

        return pieces()

    return texts


@pytest.fixture(params=["anthropic", "openai"])
def stream(
    request: pytest.FixtureRequest,
    anthropic_client: anthropic.AsyncAnthropic,
    openai_client: openai.AsyncOpenAI,
) -> Stream:
    return (
        _anthropic_stream(anthropic_client) if request.param == "anthropic" else _openai_stream(openai_client)
    )


@pytest.mark.parametrize(
    ("status", "anthropic_error", "openai_error"),
    [
        (429, anthropic.RateLimitError, openai.RateLimitError),
        (500, anthropic.InternalServerError, openai.InternalServerError),
        (529, anthropic.OverloadedError, openai.InternalServerError),
    ],
)
async def test_an_injected_status_is_the_sdks_error(
    anthropic_client: anthropic.AsyncAnthropic,
    openai_client: openai.AsyncOpenAI,
    status: int,
    anthropic_error: type[anthropic.APIStatusError],
    openai_error: type[openai.APIStatusError],
) -> None:
    header = {"x-macp-behavior": f"status={status}"}
    with pytest.raises(anthropic_error) as refused_a:
        await anthropic_client.messages.create(
            model="local-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}], extra_headers=header
        )
    with pytest.raises(openai_error) as refused_o:
        await openai_client.chat.completions.create(
            model="local-1", messages=[{"role": "user", "content": "hi"}], stream=True, extra_headers=header
        )
    assert refused_a.value.status_code == refused_o.value.status_code == status
    if status == 429:
        assert refused_a.value.response.headers["retry-after"] == "1"


async def test_a_slow_first_byte_times_the_sdk_out(stream: Stream) -> None:
    with pytest.raises((anthropic.APITimeoutError, openai.APITimeoutError)):
        await stream("slow=1")


async def test_a_cut_stream_fails_after_its_deltas(stream: Stream) -> None:
    received: list[str] = []
    pieces = await stream("cut=3")
    # Both SDKs wrap the transport's error as their own connection error (anthropic since 2.17).
    with pytest.raises((anthropic.APIConnectionError, openai.APIConnectionError)):  # noqa: PT012
        async for piece in pieces:
            received.append(piece)
    assert len(received) == 3


async def test_a_malformed_chunk_fails_the_stream_after_its_deltas(stream: Stream) -> None:
    received: list[str] = []
    pieces = await stream("malformed=2")
    with pytest.raises(ValueError, match="Expecting"):  # noqa: PT012
        async for piece in pieces:
            received.append(piece)
    assert len(received) == 2


async def test_a_booked_behavior_serves_the_models_next_requests_then_ends(
    provider_server: RunningProviderServer, openai_client: openai.AsyncOpenAI
) -> None:
    async with httpx.AsyncClient(base_url=provider_server.base_url) as admin:
        booked = await admin.post(
            "/admin/behaviors", json={"model": "flaky-1", "behavior": "status=500", "times": 2}
        )
        assert booked.status_code == 201, booked.text
        refused = await admin.post("/admin/behaviors", json={"model": "flaky-1", "behavior": "status=7"})
        assert refused.status_code == 400
        assert "status" in refused.json()["error"]

        async def ask(model: str) -> str | None:
            completion = await openai_client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
            return completion.choices[0].message.content

        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await ask("flaky-1")
        assert await ask("flaky-1")
        assert await ask("other-1")  # another model was never affected
        stats = (await admin.get("/admin/stats")).json()
    assert stats["requests"] == {"flaky-1": 3, "other-1": 1}


async def test_a_client_that_goes_away_ends_the_stream_on_the_server(
    provider_server: RunningProviderServer, stream: Stream
) -> None:
    pieces = await stream("pace=0.05,tokens=1000")
    async for _ in pieces:
        break
    await pieces.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        if provider_server.state.open_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert provider_server.state.streams_started == 1
    assert provider_server.state.open_streams == 0
