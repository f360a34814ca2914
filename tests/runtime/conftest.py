"""Fixtures of the runtime tests: the conversation service served in-process over real infrastructure."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.conversation.service import DEFINITION as CONVERSATION
from tests.runtime.serving import channel, running


@pytest.fixture
def conversation_environ(service_environ: dict[str, str]) -> dict[str, str]:
    """The conversation service's environment, listening on ports the OS picks."""
    return {**service_environ, "MACP_CONVERSATION_PORT": "0", "MACP_CONVERSATION_METRICS_PORT": "0"}


@pytest.fixture
async def conversation(conversation_environ: dict[str, str]) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a running conversation service (admit-all authentication)."""
    async with running(CONVERSATION, conversation_environ) as service, channel(service.port) as opened:
        yield opened
