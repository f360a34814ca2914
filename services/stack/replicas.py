"""How many processes of each service and of the edge `macp up` runs, and where each one listens.

Settings (a flag of `macp up` sets the same ones, services/stack/up.py):

| setting | default | what |
|---|---|---|
| MACP_REPLICAS | 1 | processes of every service and of the edge |
| MACP_<SERVICE>_REPLICAS | MACP_REPLICAS | processes of one service (`MACP_AGENT_PROXY_REPLICAS`) |
| MACP_EDGE_REPLICAS | MACP_REPLICAS | processes of the edge |
| MACP_REPLICA_PORT_STEP | 10 | replica k listens on each of its ports plus (k - 1) times this |

Replica k of a service listens on `MACP_<SERVICE>_PORT + (k - 1) * step`, and so on for its metrics
and HTTP ports: the first replica keeps every port it had, and the registry's default ports leave
room for MAX_REPLICAS of everything at the default step, no replica on another part's port. Every
port is claimed before anything starts (services/stack/process.py: check_ports), so a step that
makes two claims meet fails naming both settings. Envoy's configuration is rendered from the same
replicas (services/stack/envoy_config.py): each service's cluster holds one endpoint per replica.

One replica keeps the service's own name (`orchestrator`); with more, each is named
`<service>-<k>` (`orchestrator-1`, `orchestrator-2`): its log, pid file and `macp status` row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.runtime.registry import EDGE, SERVICES, ServiceSpec
from services.runtime.settings import Env, ServerSettings, SettingsError

ALL_REPLICAS_VARIABLE = "MACP_REPLICAS"
PORT_STEP_VARIABLE = "MACP_REPLICA_PORT_STEP"
EDGE_PORT_VARIABLE = "MACP_EDGE_PORT"
EDGE_METRICS_PORT_VARIABLE = "MACP_EDGE_METRICS_PORT"
DEFAULT_PORT_STEP = 10
# One machine's worth: each replica is a whole Python process (about 60-90 MB resident), and on a
# laptop more than a few per service only adds contention; Kubernetes scales past this
# (docs/deploy.md).
MAX_REPLICAS = 8


@dataclass(frozen=True)
class Replica:
    """One process of a service or of the edge: its name and its ports."""

    name: str
    service: str
    index: int  # 1-based
    port: int
    metrics_port: int
    http_port: int | None = None  # the tool gateway's HTTP face


def replica_variable(name: str) -> str:
    """`MACP_AGENT_PROXY_REPLICAS` for `agent-proxy`."""
    return f"MACP_{name.upper().replace('-', '_')}_REPLICAS"


def replica_count(env: Env, name: str) -> int:
    """The processes `macp up` runs of the service (or the edge) called `name`."""
    every = env.integer(ALL_REPLICAS_VARIABLE, 1, minimum=1, maximum=MAX_REPLICAS)
    return env.integer(replica_variable(name), every, minimum=1, maximum=MAX_REPLICAS)


def port_step(env: Env) -> int:
    return env.integer(PORT_STEP_VARIABLE, DEFAULT_PORT_STEP, minimum=1, maximum=1000)


def replica_name(service: str, index: int, count: int) -> str:
    return service if count == 1 else f"{service}-{index}"


def service_replicas(env: Env, spec: ServiceSpec) -> tuple[Replica, ...]:
    """Every replica of a gRPC service, from its settings (`MACP_<SERVICE>_PORT`, ...)."""
    server = ServerSettings.from_env(env, spec)
    http = None if spec.http_port is None else env.port(spec.http_port_variable, spec.http_port)
    return _replicas(env, spec.name, server.port, server.metrics_port, http)


def edge_replicas(env: Env) -> tuple[Replica, ...]:
    """Every replica of the edge, from `MACP_EDGE_PORT` and `MACP_EDGE_METRICS_PORT`."""
    port = env.port(EDGE_PORT_VARIABLE, EDGE.port)
    metrics = env.port(EDGE_METRICS_PORT_VARIABLE, EDGE.metrics_port)
    return _replicas(env, EDGE.name, port, metrics, None)


def _replicas(
    env: Env, name: str, port: int, metrics_port: int, http_port: int | None
) -> tuple[Replica, ...]:
    count = replica_count(env, name)
    step = port_step(env)
    replicas = []
    for index in range(1, count + 1):
        offset = (index - 1) * step
        moved = [port + offset, metrics_port + offset, *([] if http_port is None else [http_port + offset])]
        if max(moved) > 65535:
            raise SettingsError(
                f"{replica_variable(name)}={count} with {PORT_STEP_VARIABLE}={step} puts replica {index} "
                f"of {name} on port {max(moved)}, past 65535; lower the step or the base port"
            )
        replicas.append(
            Replica(
                name=replica_name(name, index, count),
                service=name,
                index=index,
                port=port + offset,
                metrics_port=metrics_port + offset,
                http_port=None if http_port is None else http_port + offset,
            )
        )
    return tuple(replicas)


def replica_settings(values: Sequence[str]) -> dict[str, str]:
    """The settings `macp up --replicas` stands for: `2` -> MACP_REPLICAS=2, `edge=3` ->
    MACP_EDGE_REPLICAS=3; SettingsError names the flag's bad value and what is allowed."""
    known = {name: replica_variable(name) for name in (*(spec.name for spec in SERVICES), EDGE.name)}
    settings: dict[str, str] = {}
    for value in values:
        name, _, count = value.rpartition("=")
        if not count.strip().isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise SettingsError(
                f"--replicas {value!r}: the count must be a whole number from 1 to {MAX_REPLICAS}"
            )
        if not name:
            settings[ALL_REPLICAS_VARIABLE] = str(int(count))
            continue
        variable = known.get(name.strip().replace("_", "-"))
        if variable is None:
            raise SettingsError(f"--replicas {value!r}: no service named {name!r}; known: {', '.join(known)}")
        settings[variable] = str(int(count))
    return settings
