"""What `macp up` will run, read from the environment before anything starts.

Building the plan reads every setting the launcher needs, so a malformed one fails with its
one-line SettingsError before a single process starts, and every port is known up front so all
of them can be checked at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from services.agent_proxy.settings import local_provider_needed
from services.runtime.registry import EDGE, EXAMPLE_TOOL_SERVERS, PROVIDER_SERVER, SERVICES
from services.runtime.settings import CommonSettings, Env, data_dir
from services.stack.config import EnvoyPorts
from services.stack.infra import Infrastructure
from services.stack.kafka import KafkaStorage
from services.stack.probes import grpc_serving, http_ok
from services.stack.process import REINSTALL_HINT, PortClaim, StartupError
from services.stack.replicas import (
    EDGE_METRICS_PORT_VARIABLE,
    EDGE_PORT_VARIABLE,
    Replica,
    edge_replicas,
    service_replicas,
)
from services.stack.secrets import local_secrets
from services.stack.supervisor import RestartPolicy

AppKind = Literal["service", "edge", "provider", "tools"]
EnvoyRenderer = Callable[[Path, Env], object]


@dataclass(frozen=True)
class AppSpec:
    """One MACP process `macp up` runs: a gRPC service, the edge (HTTP), the local provider server
    or an example MCP server (HTTP, no metrics port)."""

    name: str
    kind: AppKind
    argv: tuple[str, ...]
    port: int
    metrics_port: int | None
    port_variable: str
    metrics_port_variable: str | None
    # Ports it listens on besides these two (the tool gateway's HTTP face for MCP clients).
    other_ports: tuple[PortClaim, ...] = ()
    # The service it is a replica of (its own name when it runs alone: services/stack/replicas.py).
    service: str = ""
    replica: int = 1
    # Settings of this process alone: a replica's own ports, over the stack's environment.
    own_env: tuple[tuple[str, str], ...] = ()

    @property
    def service_name(self) -> str:
        return self.service or self.name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.address}/healthz"

    def probe(self) -> None:
        """gRPC health SERVING for a service, GET /healthz 200 for the edge."""
        if self.kind == "service":
            grpc_serving(self.address)
        else:
            http_ok(self.health_url)

    def claims(self) -> tuple[PortClaim, ...]:
        what = "gRPC" if self.kind == "service" else "HTTP"
        claims = [PortClaim(self.port, f"{self.name} {what}", self.port_variable)]
        if self.metrics_port is not None and self.metrics_port_variable is not None:
            claims.append(PortClaim(self.metrics_port, f"{self.name} metrics", self.metrics_port_variable))
        return (*claims, *self.other_ports)

    def check_spec(self) -> dict[str, Any]:
        if self.kind == "service":
            return {"type": "grpc", "address": self.address}
        return {"type": "http", "url": self.health_url}


def local_issuer(env: Env) -> str:
    """The token issuer: MACP_TOKEN_ISSUER, else the front listener's own origin. The issuer is the
    public base URL (the web console's redirect URI is `<issuer>/console/callback`, checked
    exactly), so a front listener moved to another port moves it too."""
    front = f"http://127.0.0.1:{EnvoyPorts.from_env(env).front}"
    return env.url("MACP_TOKEN_ISSUER", ("http", "https"), front) or front


def app_specs(env: Env) -> tuple[AppSpec, ...]:
    """Every replica of every service in the registry, then of the edge, each as
    `python -m <module>` with its own ports (services/stack/replicas.py); the local
    provider server when the agent proxy will call it (no provider key configured); and the example
    MCP servers unless `MACP_EXAMPLE_TOOLS=off` (a tenant registers them with the tool gateway)."""
    apps = []
    for spec in SERVICES:
        ports = (f"{spec.env_prefix}PORT", f"{spec.env_prefix}METRICS_PORT")
        for replica in service_replicas(env, spec):
            http = () if replica.http_port is None else ((spec.http_port_variable, replica.http_port),)
            apps.append(_replica_app(replica, "service", spec.module, ports, http))
    # The edge's own settings (services/edge/settings.py) use these names.
    edge_ports = (EDGE_PORT_VARIABLE, EDGE_METRICS_PORT_VARIABLE)
    apps += [_replica_app(replica, "edge", EDGE.module, edge_ports) for replica in edge_replicas(env)]
    if local_provider_needed(env):
        apps.append(
            AppSpec(
                name=PROVIDER_SERVER.name,
                kind="provider",
                argv=(sys.executable, "-m", PROVIDER_SERVER.module),
                port=env.port("MACP_PROVIDER_SERVER_PORT", PROVIDER_SERVER.port),
                metrics_port=None,
                port_variable="MACP_PROVIDER_SERVER_PORT",
                metrics_port_variable=None,
            )
        )
    if env.choice("MACP_EXAMPLE_TOOLS", "on", ("on", "off")) == "on":
        # Each accepts only tokens the token service issued for its own URL (register them with
        # UPSTREAM_AUTH_TOKEN_EXCHANGE), verified with the keys the edge serves.
        issuer = local_issuer(env)
        jwks_url = f"http://127.0.0.1:{EnvoyPorts.from_env(env).front}/.well-known/jwks.json"
        for example in EXAMPLE_TOOL_SERVERS:
            port = env.port(example.port_variable, example.port)
            serve = (example.server, "--port", str(port), "--url", f"http://127.0.0.1:{port}/mcp")
            audience = ("--issuer", issuer, "--jwks-url", jwks_url)
            apps.append(
                AppSpec(
                    name=example.name,
                    kind="tools",
                    argv=(sys.executable, "-m", example.module, *serve, *audience),
                    port=port,
                    metrics_port=None,
                    port_variable=example.port_variable,
                    metrics_port_variable=None,
                )
            )
    return tuple(apps)


def _replica_app(
    replica: Replica,
    kind: AppKind,
    module: str,
    port_variables: tuple[str, str],
    other_ports: tuple[tuple[str, int], ...] = (),
) -> AppSpec:
    """One replica of a service or of the edge: its ports given to it alone, over the stack's
    environment, under the settings the process reads (`port_variables`: its gRPC or HTTP port's
    and its metrics port's; `other_ports`: the tool gateway's HTTP face)."""
    port_variable, metrics_variable = port_variables
    own = {port_variable: replica.port, metrics_variable: replica.metrics_port, **dict(other_ports)}
    return AppSpec(
        name=replica.name,
        kind=kind,
        argv=(sys.executable, "-m", module),
        port=replica.port,
        metrics_port=replica.metrics_port,
        port_variable=port_variable,
        metrics_port_variable=metrics_variable,
        other_ports=tuple(PortClaim(port, f"{replica.name} HTTP", name) for name, port in other_ports),
        service=replica.service,
        replica=replica.index,
        own_env=tuple((variable, str(port)) for variable, port in own.items()),
    )


def render_envoy_config(path: Path, env: Env) -> object:
    """The native Envoy bootstrap, from the builder in envoy_config.py (imported only when needed)."""
    try:
        from services.stack import envoy_config
    except ImportError as exc:
        raise StartupError(f"cannot load the Envoy config builder ({exc}); {REINSTALL_HINT}") from None
    return envoy_config.render_native(path, env)


@dataclass
class StackPlan:
    data_dir: Path
    environ: dict[str, str]
    common: CommonSettings
    infrastructure: Infrastructure
    envoy_ports: EnvoyPorts
    apps: tuple[AppSpec, ...]
    ready_timeout: float = 60.0
    render_envoy: EnvoyRenderer = field(default=render_envoy_config)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        data_dir_override: Path | None = None,
        ready_timeout: float = 60.0,
        kafka_storage: KafkaStorage = "s3",
    ) -> StackPlan:
        """Read and check every setting (SettingsError names the first bad one); start nothing."""
        env = Env(environ)
        common = CommonSettings.from_env(env)
        directory = data_dir_override.expanduser().resolve() if data_dir_override else data_dir(env)
        return cls(
            data_dir=directory,
            environ=dict(environ),
            common=common,
            infrastructure=Infrastructure.from_env(env, directory, kafka_storage=kafka_storage),
            envoy_ports=EnvoyPorts.from_env(env),
            apps=app_specs(env),
            ready_timeout=ready_timeout,
            restart_policy=RestartPolicy.from_env(env),
        )

    def claims(self) -> list[PortClaim]:
        """Every port the stack will listen on, so all are checked before anything starts."""
        claims = self.infrastructure.claims() + list(self.envoy_ports.claims())
        return claims + [claim for app in self.apps for claim in app.claims()]

    def child_env(self) -> dict[str, str]:
        """The environment every service (and the Envoy renderer) gets."""
        env = dict(self.environ)
        env.update(self.infrastructure.env)
        env["MACP_DATA_DIR"] = str(self.data_dir)
        env.update(local_secrets(self.data_dir, self.environ))
        # Services reach each other through Envoy's mesh listener, wherever it was moved to.
        env.setdefault("MACP_MESH_ADDRESS", f"127.0.0.1:{self.envoy_ports.mesh}")
        env["MACP_TOKEN_ISSUER"] = local_issuer(Env(self.environ))
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the log file as they happen
        # A laptop's webhook receivers listen on loopback over plain http (docs/webhooks.md).
        env.setdefault("MACP_WEBHOOKS_ALLOW_LOOPBACK_HTTP", "true")
        return env

    @property
    def stop_timeout(self) -> float:
        """How long a service may take to stop: its own grace period, and a little more."""
        return self.common.shutdown_grace_seconds + 5.0
