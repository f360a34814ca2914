"""Replicas: `macp up` runs N processes of a service or of the edge, and Envoy balances over them.

The settings and the flag (services/stack/replicas.py), the plan's processes and their own ports,
Envoy's clusters with one endpoint per replica and outlier detection (services/stack/envoy_*.py),
a real Envoy taking a killed replica out of the balancing, and `macp up` of stand-ins in two
replicas each, with `macp status` showing every one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.macp_up import stack_environ as replica_environ
from services.runtime.registry import EDGE, SERVICES
from services.runtime.settings import Env, SettingsError
from services.stack.config import free_port, free_ports_in_a_row
from services.stack.envoy_clusters import OUTLIER_CONSECUTIVE_LOCAL_FAILURES
from services.stack.envoy_config import render_native, render_yaml
from services.stack.infra import scratch_data_dir
from services.stack.plan import app_specs
from services.stack.process import check_ports
from services.stack.replicas import MAX_REPLICAS, edge_replicas, replica_settings, service_replicas
from tests.stack.test_envoy_config import ENVOY_BINARY, _get, _wait_for
from tests.stack.test_up import FakeStack, component, macp

ORCHESTRATOR = next(spec for spec in SERVICES if spec.name == "orchestrator")
TOOL_GATEWAY = next(spec for spec in SERVICES if spec.http_port is not None)


# --- settings and the flag ---------------------------------------------------------------------


def test_one_replica_keeps_the_service_s_name_and_ports() -> None:
    (alone,) = service_replicas(Env({}), ORCHESTRATOR)
    assert (alone.name, alone.port, alone.metrics_port) == ("orchestrator", 15051, 9101)


def test_replicas_are_numbered_and_step_their_ports() -> None:
    env = Env({"MACP_REPLICAS": "2", "MACP_TOOL_GATEWAY_REPLICAS": "3", "MACP_REPLICA_PORT_STEP": "100"})
    assert [(r.name, r.port, r.metrics_port) for r in service_replicas(env, ORCHESTRATOR)] == [
        ("orchestrator-1", 15051, 9101),
        ("orchestrator-2", 15151, 9201),
    ]
    gateway = service_replicas(env, TOOL_GATEWAY)
    assert [r.http_port for r in gateway] == [8110, 8210, 8310]
    assert [r.name for r in edge_replicas(env)] == ["edge-1", "edge-2"]


def test_the_default_ports_leave_room_for_the_most_replicas() -> None:
    """Every part at MAX_REPLICAS on the registry's ports: no two claims meet."""
    apps = app_specs(Env({"MACP_REPLICAS": str(MAX_REPLICAS)}))
    ports = [claim.port for app in apps for claim in app.claims()]
    assert len(ports) == len(set(ports))
    assert len([app for app in apps if app.service_name == EDGE.name]) == MAX_REPLICAS


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"MACP_REPLICAS": "0"}, "MACP_REPLICAS"),
        ({"MACP_AGENT_PROXY_REPLICAS": "two"}, "MACP_AGENT_PROXY_REPLICAS"),
        ({"MACP_EDGE_REPLICAS": str(MAX_REPLICAS + 1)}, "MACP_EDGE_REPLICAS"),
        ({"MACP_REPLICAS": "3", "MACP_REPLICA_PORT_STEP": "0"}, "MACP_REPLICA_PORT_STEP"),
        ({"MACP_REPLICAS": "8", "MACP_REPLICA_PORT_STEP": "1000", "MACP_EDGE_PORT": "60000"}, "65535"),
    ],
)
def test_a_bad_replica_setting_is_refused_by_name(settings: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        app_specs(Env(settings))


def test_the_flag_stands_for_the_settings() -> None:
    assert replica_settings(["2", "edge=3", "agent_proxy=1"]) == {
        "MACP_REPLICAS": "2",
        "MACP_EDGE_REPLICAS": "3",
        "MACP_AGENT_PROXY_REPLICAS": "1",
    }
    with pytest.raises(SettingsError, match=r"no service named 'gateway'.*tool-gateway"):
        replica_settings(["gateway=2"])
    with pytest.raises(SettingsError, match="from 1 to"):
        replica_settings(["edge=0"])


def test_macp_up_names_a_bad_replicas_flag_and_starts_nothing(tmp_path: Path) -> None:
    result = macp("up", "--data-dir", str(tmp_path), "--replicas", "edge=lots", environ=dict(os.environ))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--replicas 'edge=lots'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_each_replica_gets_its_own_ports_in_its_environment() -> None:
    apps = [app for app in app_specs(Env({"MACP_REPLICAS": "2"})) if app.service_name == TOOL_GATEWAY.name]
    assert [app.name for app in apps] == ["tool-gateway-1", "tool-gateway-2"]
    second = dict(apps[1].own_env)
    assert second == {
        "MACP_TOOL_GATEWAY_PORT": str(TOOL_GATEWAY.port + 10),
        "MACP_TOOL_GATEWAY_METRICS_PORT": str(TOOL_GATEWAY.metrics_port + 10),
        "MACP_TOOL_GATEWAY_HTTP_PORT": str((TOOL_GATEWAY.http_port or 0) + 10),
    }
    assert {claim.port for claim in apps[1].claims()} == {int(port) for port in second.values()}


def test_free_ports_for_replicas_never_meet() -> None:
    environ = replica_environ({}, replicas=3)
    apps = app_specs(Env(environ))
    check_ports([claim for app in apps for claim in app.claims()])  # raises on a clash or a taken port
    assert len([app for app in apps if app.kind == "service"]) == 3 * len(SERVICES)


# --- Envoy ---------------------------------------------------------------------------------------


def _clusters(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in document["static_resources"]["clusters"]}


def _endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    found = []
    for locality in cluster["load_assignment"]["endpoints"]:
        for endpoint in locality["lb_endpoints"]:
            address = endpoint["endpoint"]["address"]["socket_address"]
            found.append((address["address"], address["port_value"]))
    return found


def test_envoy_balances_over_every_replica_and_ejects_on_connection_failures() -> None:
    document = yaml.safe_load(render_yaml("native", Env({"MACP_REPLICAS": "2", "MACP_EDGE_REPLICAS": "3"})))
    clusters = _clusters(document)
    for spec in SERVICES:
        assert _endpoints(clusters[spec.name]) == [("127.0.0.1", spec.port), ("127.0.0.1", spec.port + 10)]
    assert [port for _, port in _endpoints(clusters[EDGE.name])] == [8000, 8010, 8020]
    assert [port for _, port in _endpoints(clusters[TOOL_GATEWAY.http_name])] == [8110, 8120]
    for name, cluster in clusters.items():
        outliers = cluster["outlier_detection"]
        assert outliers["consecutive_local_origin_failure"] == OUTLIER_CONSECUTIVE_LOCAL_FAILURES, name
        assert outliers["split_external_local_origin_errors"] is True, name
        # An answer never ejects a replica, whatever its status: readiness is the health checks'.
        assert outliers["enforcing_consecutive_5xx"] == 0, name
        assert outliers["enforcing_consecutive_gateway_failure"] == 0, name
        assert outliers["max_ejection_percent"] == 50, name
    # Compose names one DNS name per cluster, which resolves to every replica.
    compose = _clusters(yaml.safe_load(render_yaml("compose", Env({"MACP_REPLICAS": "2"}))))
    assert _endpoints(compose["orchestrator"]) == [("orchestrator", 15051)]


class _Replica:
    """A stand-in token service replica: health SERVING, GetJwks answering its own name."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        token = next(spec for spec in SERVICES if spec.name == "token")
        answer: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            lambda request, context: name.encode()
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(token.grpc_services[0], {"GetJwks": answer}),)
        )
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def kill(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def two_token_replicas(tmp_path: Path) -> Iterator[tuple[int, int, list[_Replica]]]:
    first = free_ports_in_a_row(2)
    replicas = [_Replica("token-1", first), _Replica("token-2", first + 1)]
    mesh, admin = free_port(), free_port()
    settings = {
        "MACP_TOKEN_REPLICAS": "2",
        "MACP_REPLICA_PORT_STEP": "1",
        "MACP_TOKEN_PORT": str(first),
        "MACP_ENVOY_FRONT_PORT": str(free_port()),
        "MACP_ENVOY_MESH_PORT": str(mesh),
        "MACP_ENVOY_ADMIN_PORT": str(admin),
        "MACP_EDGE_PORT": str(free_port()),
        **{f"{spec.env_prefix}PORT": str(free_port()) for spec in SERVICES if spec.name != "token"},
    }
    config = render_native(tmp_path / "envoy.yaml", Env(settings))
    with (tmp_path / "envoy.out").open("wb") as out:
        envoy = subprocess.Popen(
            [ENVOY_BINARY, "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        flags = [f"token::127.0.0.1:{r.port}::health_flags::healthy".encode() for r in replicas]
        _wait_for(
            lambda: all(flag in _get(f"http://127.0.0.1:{admin}/clusters")[2] for flag in flags),
            "Envoy's health checks to pass for both token replicas",
        )
        yield mesh, admin, replicas
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        for replica in replicas:
            replica.kill()


@pytest.mark.integration
def test_a_killed_replica_leaves_the_balancing_and_calls_go_on(
    two_token_replicas: tuple[int, int, list[_Replica]],
) -> None:
    mesh, admin, replicas = two_token_replicas
    with grpc.insecure_channel(f"127.0.0.1:{mesh}") as channel:
        get_jwks: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{next(s for s in SERVICES if s.name == 'token').grpc_services[0]}/GetJwks"
        )
        answered = Counter(get_jwks(b"", timeout=5).decode() for _ in range(40))
        assert set(answered) == {"token-1", "token-2"}, answered  # round robin over both

        replicas[1].kill()
        began = time.monotonic()
        failed = 0
        after: Counter[str] = Counter()
        # Each call right after the kill: a refused connection is retried on the other replica
        # (the mesh's unsent-request retry), and the third takes the dead one out of the balancing.
        while time.monotonic() - began < 3.0:
            try:
                after[get_jwks(b"", timeout=5).decode()] += 1
            except grpc.RpcError:
                failed += 1
        assert failed == 0, f"{failed} calls failed after the kill; answered: {after}"
        assert set(after) == {"token-1"}
    clusters = _get(f"http://127.0.0.1:{admin}/clusters")[2].decode()
    assert f"token::127.0.0.1:{replicas[1].port}::health_flags::healthy" not in clusters, clusters


# --- macp up of stand-ins in two replicas -------------------------------------------------------


@pytest.fixture
def replicated_fake_stack() -> Iterator[FakeStack]:
    with scratch_data_dir() as base:
        stack = FakeStack(base / "data", replica_environ({}, replicas=2) | {"MACP_EXAMPLE_TOOLS": "off"})
        try:
            yield stack
        finally:
            stack.close()


@pytest.mark.integration
def test_up_runs_two_of_everything_and_status_shows_each(replicated_fake_stack: FakeStack) -> None:
    stack = replicated_fake_stack
    document = stack.wait_ready()
    names = [c["name"] for c in document["components"] if c.get("kind") in ("service", "edge")]
    expected = [f"{spec.name}-{index}" for spec in SERVICES for index in (1, 2)]
    assert names == [*expected, "edge-1", "edge-2"]
    assert {c["service"] for c in document["components"] if c["name"].startswith("agent-proxy")} == {
        "agent-proxy"
    }

    status = macp("status", "--data-dir", str(stack.data_dir), environ=stack.environ)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in names:
        assert f"\n{name} " in status.stdout
    assert "replicas: orchestrator 2/2 ok" in status.stdout
    assert "edge 2/2 ok" in status.stdout

    # One replica killed: the supervisor restarts it; its twin runs on untouched.
    victim, twin = component(document, "metering-2"), component(document, "metering-1")
    os.kill(victim["pid"], signal.SIGKILL)
    restarted = stack.wait_for(
        "metering-2 to run again under a new pid",
        lambda d: (
            component(d, "metering-2")["pid"] not in (None, victim["pid"])
            and component(d, "metering-2").get("state") == "running"
        ),
        timeout=20,
    )
    assert component(restarted, "metering-1")["pid"] == twin["pid"]
    assert component(restarted, "metering-2")["restarts"] == 1
