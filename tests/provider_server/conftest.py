"""The local provider server served in-process for one test, and the official SDKs pointed at it
(with their own retries off, so every injected fault reaches the test)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from services.provider_server.server import RunningProviderServer, serving


@pytest.fixture
async def provider_server() -> AsyncIterator[RunningProviderServer]:
    async with serving() as running:
        yield running


@pytest.fixture
async def anthropic_client(provider_server: RunningProviderServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=provider_server.base_url, api_key="local", max_retries=0)
    async with client:
        yield client


@pytest.fixture
async def openai_client(provider_server: RunningProviderServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{provider_server.base_url}/v1", api_key="local", max_retries=0)
    async with client:
        yield client
