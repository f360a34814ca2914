"""Rate limits of tool calls per tenant per tool, counted in Redis as the edge counts its own: past the
limit a call is RESOURCE_EXHAUSTED naming the tool and when to retry, audited `rate_limited`, and
neither reaches the upstream nor holds quota; another tenant, or another tool, is not slowed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.runtime.settings import Env, SettingsError
from services.tool_gateway.settings import QUOTA_HOLDS, TOOL_RATE_LIMIT, ToolGatewaySettings
from tests.tool_gateway.conftest import refused, register
from tests.tool_gateway.test_usage_events import audited_results, call, tool_quota
from tests.tool_gateway.usage_mesh import CALLS_PER_MINUTE, UsageMesh, usage_mesh

LIMIT = CALLS_PER_MINUTE  # all at once, then one every 20 s


@pytest.fixture
async def mesh(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[UsageMesh]:
    async with usage_mesh(service_environ, tmp_path) as running:
        yield running


@pytest.mark.integration
async def test_a_tenant_past_a_tools_rate_is_refused_and_no_one_else_is_slowed(mesh: UsageMesh) -> None:
    alice, bob = mesh.alice.caller, mesh.bob.caller
    for caller in (alice, bob):
        await register(caller, "counting", mesh.counting_url)
    await register(alice, "weather", mesh.weather_url)
    for _ in range(LIMIT):
        assert (await call(alice, "counting__fine")).text == "fine"

    error = await refused(call(alice, "counting__fine"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error.details() or ""
    assert details.startswith("tool counting__fine: the tenant's rate limit (3 per minute) is reached")
    match = re.search(r"retry after (\d+) s$", details)
    assert match is not None
    assert 1 <= int(match.group(1)) <= 20  # one call is earned back every 20 s
    assert dict(error.trailing_metadata() or ())["macp-error-reason"] == "RATE_LIMITED"
    assert mesh.seen.calls == {"fine": LIMIT}  # the refused call never reached the upstream

    # The same tenant's other tool, and another tenant's same tool, each have their own bucket.
    await call(alice, "weather__forecast", city="Oslo")
    for _ in range(LIMIT):
        assert (await call(bob, "counting__fine")).text == "fine"
    assert mesh.seen.calls == {"fine": 2 * LIMIT}

    assert await audited_results(mesh, alice.tenant_id) == [*["ok"] * LIMIT, "rate_limited", "ok"]
    # A refused call held no quota and is no usage.
    quota = await tool_quota(mesh.alice)
    assert (quota.used_quantity, quota.reserved_quantity) == (LIMIT + 1, 0)


def test_the_rate_is_written_like_the_edges_limits_and_a_bad_one_is_named() -> None:
    default = ToolGatewaySettings.from_env(Env({})).tool_rate
    assert [(limit.limit, limit.period_seconds, limit.burst) for limit in default] == [(10, 1, 20)]
    assert ToolGatewaySettings.from_env(Env({TOOL_RATE_LIMIT: "off"})).tool_rate == ()
    two = ToolGatewaySettings.from_env(Env({TOOL_RATE_LIMIT: "5/s + 1000/hour"})).tool_rate
    assert [limit.name for limit in two] == ["tool_calls-1", "tool_calls-2"]
    with pytest.raises(SettingsError, match=rf"^{TOOL_RATE_LIMIT}: 'fast' is not a rate"):
        ToolGatewaySettings.from_env(Env({TOOL_RATE_LIMIT: "fast"}))
    with pytest.raises(SettingsError, match=rf"^{TOOL_RATE_LIMIT}: '0/s' must allow at least one request"):
        ToolGatewaySettings.from_env(Env({TOOL_RATE_LIMIT: "0/s"}))
    with pytest.raises(SettingsError, match=QUOTA_HOLDS):
        ToolGatewaySettings.from_env(Env({QUOTA_HOLDS: "maybe"}))
