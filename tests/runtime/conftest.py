"""Fixtures of the runtime tests: the conversation service served in-process over real infrastructure,
authenticating real tokens from the real token service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.conversation.service import DEFINITION as CONVERSATION
from services.runtime.auth.settings import service_audience
from tests.runtime.serving import running
from tests.tokens import TokenWorld, bearer_channel, token_world


@pytest.fixture
def conversation_environ(service_environ: dict[str, str]) -> dict[str, str]:
    """The conversation service's environment, listening on ports the OS picks."""
    return {**service_environ, "MACP_CONVERSATION_PORT": "0", "MACP_CONVERSATION_METRICS_PORT": "0"}


@pytest.fixture
async def tokens(service_environ: dict[str, str]) -> AsyncIterator[TokenWorld]:
    """The real token service, sharing the test's database and Redis prefix."""
    async with token_world(service_environ) as world:
        yield world


@pytest.fixture
async def conversation(
    conversation_environ: dict[str, str], tokens: TokenWorld
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a running conversation service whose calls carry a user's token for it (both
    scopes), unless a call names its own `authorization`."""
    tenant = await tokens.tenant()
    token = await tokens.user_token(tenant, [service_audience("conversation")])
    environ = tokens.service_environ(conversation_environ)
    async with running(CONVERSATION, environ) as service, bearer_channel(service.port, token) as opened:
        yield opened
