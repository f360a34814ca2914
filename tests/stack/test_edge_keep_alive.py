"""Envoy, not the edge, closes an idle connection between them. Envoy keeps its connections to the
edge in a pool that every caller's requests share; if the edge closed an idle one first, a request
Envoy sent on it as the close arrived would fail with 503 `connection termination`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import yaml

from services.edge.app import build_app
from services.edge.server import uvicorn_config
from services.edge.settings import EdgeSettings
from services.runtime.metrics import HttpMetrics
from services.runtime.registry import EDGE
from services.runtime.settings import Env
from services.stack.envoy_config import TARGETS, Target, render_yaml


def _edge_idle_timeout(target: Target) -> timedelta:
    document: dict[str, Any] = yaml.safe_load(render_yaml(target, Env({})))
    (edge,) = [c for c in document["static_resources"]["clusters"] if c["name"] == EDGE.name]
    options = next(iter(edge["typed_extension_protocol_options"].values()))
    idle: str = options["common_http_protocol_options"]["idle_timeout"]
    return timedelta(seconds=float(idle.removesuffix("s")))


@pytest.mark.parametrize("target", TARGETS)
def test_envoy_drops_an_idle_edge_connection_before_the_edge_would(target: Target) -> None:
    settings = EdgeSettings.from_env(Env({"MACP_REDIS_URL": "redis://127.0.0.1:1/0"}))
    keep_alive = uvicorn_config(build_app(settings, HttpMetrics("edge")), settings).timeout_keep_alive
    # A margin of seconds: the two timers start on either side of the same last response.
    assert _edge_idle_timeout(target) + timedelta(seconds=5) <= timedelta(seconds=keep_alive)
