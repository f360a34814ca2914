"""The `/metrics` endpoint every process serves: the Prometheus text format (OpenMetrics when the
scrape asks for it), GET only, and a close that frees the port at once."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
from prometheus_client import CollectorRegistry, Counter

from services.runtime.metrics import serve_metrics
from services.stack.config import free_port


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("macp_probe", "A probe counter", registry=registry).inc(3)
    return registry


async def test_a_scrape_gets_the_registry_in_the_format_it_accepts() -> None:
    port = free_port()
    endpoint = await serve_metrics(_registry(), "127.0.0.1", port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
            text = await http.get("/metrics")
            assert text.status_code == 200
            assert text.headers["content-type"].startswith("text/plain")
            assert "macp_probe_total 3.0" in text.text
            open_metrics = await http.get(
                "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
            assert open_metrics.text.endswith("# EOF\n")
            refused = await http.post("/metrics", content=b"x")
            assert refused.status_code == 405
    finally:
        await endpoint.close()


async def test_a_client_that_sends_nothing_holds_nothing_up() -> None:
    port = free_port()
    endpoint = await serve_metrics(_registry(), "127.0.0.1", port)
    try:
        idle = socket.create_connection(("127.0.0.1", port))  # connects, never sends a request
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        idle.close()
    finally:
        await endpoint.close()


async def test_close_frees_the_port_at_once() -> None:
    port = free_port()
    endpoint = await serve_metrics(_registry(), "127.0.0.1", port)
    started = time.monotonic()
    await endpoint.close()
    assert time.monotonic() - started < 0.1
    again = await asyncio.wait_for(serve_metrics(_registry(), "127.0.0.1", port), 1)
    await again.close()
