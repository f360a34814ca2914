"""Cancelling a Generate cancels the upstream HTTP request: after 1,000 streams cancelled mid-answer,
no upstream stream is open, no socket to the provider is left, no task lingers, and memory is flat."""

from __future__ import annotations

import asyncio
import gc
from urllib.parse import urlsplit

import grpc
import psutil
import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb

from services.provider_server.server import RunningProviderServer
from tests.agent_proxy.conftest import book, generate_request, provider_environ, running_proxy
from tests.tokens import TokenWorld

# A thousand real streams cost tens of seconds of CPU on a busy two-core machine: more than the
# suite's default 120 s per test allows when others share it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROUNDS = 4
STREAMS_PER_ROUND = 250


def _sockets_to(port: int) -> int:
    """This process's TCP connections to or from `port` (both ends live here)."""
    connections = psutil.Process().net_connections(kind="tcp")
    return sum(
        1
        for c in connections
        if c.status == psutil.CONN_ESTABLISHED and port in (c.laddr.port, c.raddr.port if c.raddr else None)
    )


async def _settle(provider_server: RunningProviderServer) -> None:
    for _ in range(200):
        if provider_server.state.open_streams == 0:
            return
        await asyncio.sleep(0.05)


async def test_cancelling_1000_streams_leaves_nothing_behind(
    service_environ: dict[str, str], tokens: TokenWorld, provider_server: RunningProviderServer
) -> None:
    port = urlsplit(provider_server.base_url).port
    assert port is not None
    # Long, slow answers: every stream is cancelled while the provider is still writing it.
    await book(provider_server, "echo-1", "tokens=5000,pace=0.2")
    environ = {
        **service_environ,
        **provider_environ(provider_server.base_url),
        "MACP_AGENT_PROXY_MAX_CONCURRENCY": str(STREAMS_PER_ROUND),
    }
    async with running_proxy(environ, tokens) as proxy:

        async def round_of_cancels() -> None:
            calls = [
                proxy.stub.Generate(
                    generate_request(proxy.tenant.tenant_id, max_tokens=5000), metadata=proxy.auth, timeout=60
                )
                for _ in range(STREAMS_PER_ROUND)
            ]
            firsts = await asyncio.gather(*(call.read() for call in calls))
            assert all(isinstance(f, pb.GenerateResponse) and f.HasField("text_delta") for f in firsts)
            assert provider_server.state.open_streams == STREAMS_PER_ROUND
            for call in calls:
                call.cancel()
            for call in calls:
                assert await call.code() == grpc.StatusCode.CANCELLED
            await _settle(provider_server)

        await round_of_cancels()  # warm-up: pools, caches and allocator arenas reach their size
        gc.collect()
        tasks_before = await _most_tasks_over(1.0)
        rss_before = psutil.Process().memory_info().rss
        for _ in range(ROUNDS - 1):
            await round_of_cancels()
        gc.collect()
        for _ in range(100):  # generators the cancellations left are finalized by short-lived tasks
            if len(asyncio.all_tasks()) <= tasks_before:
                break
            await asyncio.sleep(0.05)

        assert provider_server.state.streams_started == ROUNDS * STREAMS_PER_ROUND
        assert provider_server.state.open_streams == 0
        assert _sockets_to(port) == 0
        assert len(asyncio.all_tasks()) <= tasks_before
        grown = psutil.Process().memory_info().rss - rss_before
        assert grown < 40 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB over {ROUNDS - 1} rounds"


async def _most_tasks_over(seconds: float) -> int:
    """The most tasks alive at once over `seconds`: the services' own background work comes and
    goes (the usage outbox's blocked read and its stop watch are two tasks while a read is in
    flight), so one sample could catch it between reads and the count after it in one."""
    most = 0
    for _ in range(int(seconds / 0.02)):
        most = max(most, len(asyncio.all_tasks()))
        await asyncio.sleep(0.02)
    return most
