"""Every process of the whole mesh serves the shared metric names on its real /metrics port, and
each domain signal where it belongs; docs/operations.md's catalogue lists every family served, and
its PromQL, the Prometheus rules and the Grafana dashboard use only names these scrapes show."""

from __future__ import annotations

import httpx
import pytest

from services.runtime.registry import EDGE, SERVICES
from tests.scrape import Scrape, scrape
from tests.stack.observability import catalogue, used_metric_names
from tests.world import World

pytestmark = pytest.mark.integration

SHARED_RPC = {
    "macp_rpc_requests": "counter",
    "macp_rpc_duration_seconds": "histogram",
    "macp_serving": "gauge",
}
SHARED_HTTP = {"macp_http_requests": "counter", "macp_http_request_duration_seconds": "histogram"}
# Domain signal -> the processes that export it (the rate limits: the edge, and the tool gateway
# for its /mcp, which Envoy routes past the edge).
RATE_LIMITED = (EDGE.name, "tool-gateway")
DOMAIN: dict[str, tuple[str, ...]] = {
    "pending_agent_requests": ("agent-proxy",),
    "macp_breaker_state": ("agent-proxy",),
    "macp_generate_first_token_seconds": ("agent-proxy",),
    "macp_quota_refusals": ("metering",),
    "macp_consumer_records": ("metering",),
    "macp_consumer_lag": ("metering",),
    "macp_consumer_batch_duration_seconds": ("metering",),
    "macp_rate_limit_decisions": RATE_LIMITED,
    "macp_rate_limited": RATE_LIMITED,
    "macp_rate_limit_fallback": RATE_LIMITED,
}


async def test_every_process_exposes_the_shared_names_and_its_own_signals(world: World) -> None:
    # One request through Envoy's front listener, so the edge has served a route (Envoy's health
    # checks have already called every gRPC service's Health/Check).
    async with httpx.AsyncClient(base_url=world.front_url, timeout=10, trust_env=False) as http:
        listed = await http.get(
            "/v1/agents", params={"page_size": "1"}, headers={"authorization": f"Bearer {world.edge_token}"}
        )
    assert listed.status_code == 200

    scrapes: dict[str, Scrape] = {}
    for spec in SERVICES:
        found = scrapes[spec.name] = await scrape(world.metrics_port(spec.name))
        for family, kind in SHARED_RPC.items():
            assert found.families.get(family) == kind, f"{spec.name} does not declare {family}"
        assert found.value("macp_serving", service=spec.name) == 1
        assert {"macp_rpc_requests_total", "macp_rpc_duration_seconds_bucket"} <= found.sample_names, (
            spec.name
        )
        health = found.value(
            "macp_rpc_requests_total", service=spec.name, rpc="/grpc.health.v1.Health/Check", grpc_status="OK"
        )
        assert health is not None, f"{spec.name} counted no health check"
        assert health >= 1

    edge = scrapes[EDGE.name] = await scrape(world.metrics_port(EDGE.name))
    for family, kind in SHARED_HTTP.items():
        assert edge.families.get(family) == kind
    route = {"service": "edge", "method": "GET", "route": "/v1/agents", "status": "200"}
    assert edge.value("macp_http_requests_total", **route) == 1
    assert edge.value("macp_http_request_duration_seconds_count", **route) == 1
    admitted = edge.value(
        "macp_rate_limit_decisions_total", scope="class", limit="consumer", decision="admitted"
    )
    assert admitted == 1

    for family, owners in DOMAIN.items():
        for process, found in scrapes.items():
            declared = family in found.families
            assert declared == (process in owners), f"{family} on {process} (belongs to {owners})"
    assert scrapes["metering"].value("macp_quota_refusals_total", tier="free", meter="agent_turns") == 0
    assert scrapes["agent-proxy"].value("macp_breaker_state", provider="local", model="echo-1") == 0

    # docs/operations.md's catalogue lists every family a process serves (counters by their
    # `_total` name; the `_created` companions prometheus_client adds are not catalogued).
    catalogued = catalogue()
    for process, found in scrapes.items():
        for family, kind in found.families.items():
            name = f"{family}_total" if kind == "counter" else family
            if not family.endswith("_created"):
                assert name in catalogued, f"{process} serves {name}, which the catalogue does not list"

    exported = set().union(*(found.exported_names for found in scrapes.values()))
    for where, names in used_metric_names().items():
        unknown = names - exported
        assert not unknown, f"{where} uses metric names no process exports: {sorted(unknown)}"
