"""A running slice of the mesh to measure: the real infrastructure, the conversation and token services
and the edge, and Envoy's front and mesh listeners in front of them, all on free ports of 127.0.0.1.

Every hop authenticates, as in `macp up`: the slice seeds the local administrator (`seed.seed`) and
signs it in at the front listener's /oauth2/token, for the edge and for the conversation service.

The parts start from the project's own code, exactly as the end-to-end fixtures and `macp up` start
them: `ephemeral_infrastructure`, the apps of `plan.app_specs` (`python -m services.conversation`,
`python -m services.edge`) under `ManagedProcess`, and `Envoy` on `envoy_config.render_native`.
Unlike tests/e2e/conftest.py, which serves the conversation service and the edge inside the test's
event loop, each runs in its own process, as in `macp up`: a load generator sharing their loop would
bill its own CPU to the servers it measures.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import httpx
from macp.token.v1 import token_service_pb2_grpc as token_grpc
from macp_client import MacpClient, MacpError, Password

from bench.service_tokens import service_token
from services.runtime.auth.settings import USER_SCOPES
from services.runtime.registry import EDGE
from services.runtime.settings import Env
from services.stack.config import EnvoyPorts, free_port
from services.stack.envoy import Envoy
from services.stack.envoy_config import render_native
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir
from services.stack.plan import AppSpec, app_specs
from services.stack.probes import ProbeError, answers, http_get
from services.stack.process import ManagedProcess, StartupError
from services.stack.secrets import local_secrets
from services.stack.seed import LocalAdmin, seed

CONVERSATION = "conversation"
TOKEN = "token"
APPS = (CONVERSATION, TOKEN, EDGE.name)
READY_TIMEOUT_SECONDS = 60.0


def book_behavior(provider_url: str, model: str, behavior: str) -> None:
    """Tell the local provider server how `model` answers from now on (e.g. `tokens=20`)."""
    booked = httpx.post(
        f"{provider_url}/admin/behaviors",
        json={"model": model, "behavior": behavior},
        timeout=10,
        trust_env=False,
    )
    booked.raise_for_status()


@dataclass(frozen=True)
class RunningSlice:
    """Where each hop of the slice listens, and the pids whose CPU time the benchmark reads."""

    front_url: str  # Envoy's front listener → edge
    edge_url: str  # the edge itself, no Envoy in front (it still calls through the mesh)
    mesh_address: str  # Envoy's mesh listener → conversation
    conversation_address: str  # the conversation service itself
    token_address: str  # the token service itself
    database_url: str
    redis_url: str
    pids: dict[str, int]  # conversation, token, edge, envoy, postgres
    admin: LocalAdmin  # the seeded tenant, user and clients
    initial_access_token: str  # what registers more clients (RFC 7591)
    edge_token: str  # the admin user's access token for the edge
    conversation_token: str  # the same user's token for the conversation service itself

    @property
    def edge_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.edge_token}"}

    @property
    def conversation_metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.conversation_token}"),)


def cluster_healthy(admin_port: int, cluster: str) -> bool:
    """Envoy's admin /clusters lists a host of `cluster` with no failed health check."""
    try:
        status, body = http_get(f"http://127.0.0.1:{admin_port}/clusters", timeout=2)
    except ProbeError:
        return False
    lines = body.decode(errors="replace").splitlines()
    return status == 200 and any(
        line.startswith(f"{cluster}::") and line.endswith("health_flags::healthy") for line in lines
    )


def _wait(what: str, check: Callable[[], bool], deadline: float) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise StartupError(f"{what} within {READY_TIMEOUT_SECONDS:g} s")
        time.sleep(0.1)


def parts_environ(
    infrastructure_env: Mapping[str, str], apps: Collection[str], extra: Collection[str] = ()
) -> dict[str, str]:
    """This process's environment without MACP_ settings, plus the infrastructure, distinct free
    ports for `apps` (registry names: each one's port and metrics port), Envoy's listeners and the
    `extra` port variables, and the mesh address."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("MACP_")}
    prefixes = [f"MACP_{app.upper().replace('-', '_')}_" for app in apps]
    variables = [f"{prefix}{suffix}" for prefix in prefixes for suffix in ("PORT", "METRICS_PORT")]
    variables += ["MACP_ENVOY_FRONT_PORT", "MACP_ENVOY_MESH_PORT", "MACP_ENVOY_ADMIN_PORT", *extra]
    ports: set[int] = set()
    while len(ports) < len(variables):
        ports.add(free_port())
    environ.update(infrastructure_env)
    environ.update({variable: str(port) for variable, port in zip(variables, sorted(ports), strict=True)})
    environ["MACP_MESH_ADDRESS"] = f"127.0.0.1:{environ['MACP_ENVOY_MESH_PORT']}"
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


def _environ(infrastructure_env: dict[str, str]) -> dict[str, str]:
    """This process's environment without MACP_ settings, plus the infrastructure and free ports."""
    environ = parts_environ(infrastructure_env, (CONVERSATION, TOKEN, EDGE.name))
    # No orchestrator in the slice: the edge is ready once what the slice does run answers.
    environ["MACP_EDGE_NEEDS"] = "conversation,token"
    # The benchmarks measure the path, not the limits: the seeded admin's client is internal
    # (1,000/min), which a closed loop at 16 in flight passes in seconds, and a sign-in bench asks
    # /oauth2/token without a token from one address. Rate limiting is still on (one Redis script
    # per request); only its thresholds are out of reach.
    for variable in (
        "MACP_RATE_LIMIT_API",
        "MACP_RATE_LIMIT_INTERNAL",
        "MACP_RATE_LIMIT_TENANT",
        "MACP_RATE_LIMIT_SOURCE",
        "MACP_RATE_LIMIT_SOURCE_FAILURES",
    ):
        environ[variable] = "1000000/s"
    environ["MACP_RATE_LIMIT_SOURCE_IN_FLIGHT"] = "1000000"
    return environ


@contextmanager
def running_slice(
    progress: Callable[[str], None] = lambda line: None, overrides: Mapping[str, str] | None = None
) -> Iterator[RunningSlice]:
    """Start the slice, yield where it listens once Envoy sees both upstreams healthy, stop it all.
    `overrides` are settings of every process (a bench that measures a limit sets it back)."""
    with ExitStack() as stack:
        infrastructure = stack.enter_context(ephemeral_infrastructure(progress=progress))
        directory = stack.enter_context(scratch_data_dir("macp-bench-slice-"))
        environ = _environ(infrastructure.env) | dict(overrides or {})
        environ.update(local_secrets(directory, environ))
        apps, envoy = start_apps_and_envoy(stack, environ, directory, APPS)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for app, process in apps:
            process.wait_ready(partial(answers, app.probe), max(0.0, deadline - time.monotonic()))
            progress(f"{app.name} ready on {app.address}")
        for cluster in APPS:
            _wait(
                f"Envoy saw no healthy {cluster}",
                partial(cluster_healthy, envoy.ports.admin, cluster),
                deadline,
            )
        by_name = {app.name: (app, process) for app, process in apps}
        conversation, token, edge = by_name[CONVERSATION], by_name[TOKEN], by_name[EDGE.name]
        admin = seed(directory, envoy.mesh_address, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]).admin
        pids = {name: process.pid for name, (_, process) in by_name.items()}
        pids |= {"envoy": envoy.pid, "postgres": infrastructure.postgres.pid}
        yield RunningSlice(
            front_url=envoy.url,
            edge_url=f"http://{edge[0].address}",
            mesh_address=envoy.mesh_address,
            conversation_address=conversation[0].address,
            token_address=token[0].address,
            database_url=infrastructure.env["MACP_DATABASE_URL"],
            redis_url=infrastructure.env["MACP_REDIS_URL"],
            pids={name: pid for name, pid in pids.items() if pid is not None},
            admin=admin,
            initial_access_token=environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"],
            edge_token=sign_in(envoy.url, admin),
            conversation_token=asyncio.run(
                _conversation_token(token[0].address, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"], admin)
            ),
        )


def start_apps_and_envoy(
    stack: ExitStack, environ: dict[str, str], directory: Path, names: Collection[str]
) -> tuple[list[tuple[AppSpec, ManagedProcess]], Envoy]:
    """The apps of `plan.app_specs` named in `names`, each its own process as `macp up` runs them,
    then Envoy in front of them; `stack` stops them (Envoy first). Readiness is the caller's to wait
    for, since each benchmark waits for its own clusters."""
    env = Env(environ)
    apps: list[tuple[AppSpec, ManagedProcess]] = []
    for app in app_specs(env):
        if app.name in names:
            process = ManagedProcess(
                app.name,
                app.argv,
                data_dir=directory,
                binary_source="the Python interpreter",
                env=environ,
                ports=app.claims(),
            )
            stack.callback(process.stop)
            process.start()
            apps.append((app, process))
    envoy = Envoy(directory, render_native(directory / "envoy" / "envoy.yaml", env), EnvoyPorts.from_env(env))
    stack.callback(envoy.stop)  # the callbacks run last-in first-out: Envoy, then the apps
    envoy.start()
    return apps, envoy


async def _conversation_token(token_address: str, initial_access_token: str, admin: LocalAdmin) -> str:
    """The admin user's token for the conversation service itself, got the way the edge gets one:
    signed in through a consumer client, then exchanged by an internal one (bench/service_tokens.py)."""
    async with grpc.aio.insecure_channel(token_address) as channel:
        return await service_token(
            token_grpc.TokenServiceStub(channel),
            initial_access_token,
            admin.tenant_id,
            admin.username,
            admin.password,
            CONVERSATION,
            " ".join(USER_SCOPES),
        )


def sign_in(front_url: str, admin: LocalAdmin, resource: str | None = None) -> str:
    """The admin user's access token from the front listener's /oauth2/token (password grant with
    the seeded CLI client, through the Python client), for the edge or, with `resource`
    (RFC 8707), for that service. Setup only: no benchmark times it."""
    grant = Password(
        admin.username, admin.password, admin.cli_client_id, resource=(resource,) if resource else ()
    )
    try:
        with MacpClient(front_url, timeout=10, trust_env=False) as client:
            return client.sign_in(grant)["access_token"]
    except MacpError as error:
        raise StartupError(f"signing in the seeded admin failed: {error}") from None
