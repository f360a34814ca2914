"""`python -m bench.rate_limit`: what the edge's rate limiting adds to a request, beside its raw
baseline, in one run: the same requests through an edge with the limits on and one with them off.

The slice of bench/slice.py (real infrastructure, the token and conversation services, Envoy's mesh
listener, each in its own process), with two edges side by side on the same mesh and Redis: one as
configured (the limits on, their thresholds out of reach so every request is counted and none is
refused), one with `MACP_RATE_LIMITS=off`. The client calls each edge directly, so the rows differ
by the rate limiting alone. Rows, taken in turns (bench.agent_slice.measure_block):

- the raw baseline: `RedisLimiter.check` of the three limits an authenticated request is under
  (API, client class, tenant): one EVALSHA of the GCRA script and its answer read, from this process;
- an authenticated GET of a path no route serves (404 after authentication and the rate limit: the
  edge alone, no RPC behind it), limits off then on;
- `GET /v1/agents/{id}` of a cached agent (the edge, the mesh, the conversation service), limits off
  then on.

The `+p50 ms` of each "on" row over its "off" row is the added cost (target: at most 0.5 ms).
Load is closed-loop on 127.0.0.1, bounded in count and time per row (bench/load.py).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import redis.asyncio as aioredis

from bench.agent_slice import (
    LoadDefaults,
    Paths,
    Row,
    Settings,
    Target,
    _expect,
    block_table,
    failures,
    measure_block,
    run_slice_bench,
    seed_agents,
)
from bench.cpu import CLIENT, CpuMeter
from bench.load import Call
from bench.slice import (
    APPS,
    READY_TIMEOUT_SECONDS,
    RunningSlice,
    _environ,
    cluster_healthy,
    sign_in,
    start_apps_and_envoy,
)
from services.edge.rate_limits import RateLimitSettings
from services.runtime.auth.settings import service_audience
from services.runtime.ratelimit import RedisLimiter
from services.runtime.registry import EDGE
from services.runtime.settings import Env
from services.stack.config import free_port
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir
from services.stack.probes import answers, http_ok
from services.stack.process import ManagedProcess, StartupError
from services.stack.secrets import local_secrets
from services.stack.seed import seed

OFF = "edge-off"
SERVER_COLUMNS = ("edge", OFF, "conversation", "envoy")
CPU_COLUMNS = (CLIENT, *SERVER_COLUMNS)
BLOCKS = (
    ("404", "authenticated GET of an unknown path (404: the edge alone, no RPC)"),
    ("GET", "`GET /v1/agents/{id}`, a cached agent (edge → mesh → conversation)"),
)


@dataclass(frozen=True)
class TwoEdges:
    slice: RunningSlice  # its edge_url is the edge with the limits on
    off_url: str  # the same edge with MACP_RATE_LIMITS=off
    environ: dict[str, str]


@contextmanager
def running_edges(progress: Callable[[str], None]) -> Iterator[TwoEdges]:
    """bench/slice.py's slice plus a second edge with the limits off, on the same mesh and Redis."""
    with ExitStack() as stack:
        infrastructure = stack.enter_context(ephemeral_infrastructure(progress=progress))
        directory = stack.enter_context(scratch_data_dir("macp-bench-rate-limit-"))
        environ = _environ(infrastructure.env)
        environ.update(local_secrets(directory, environ))
        off_port = free_port()
        off = ManagedProcess(
            OFF,
            (sys.executable, "-m", EDGE.module),
            data_dir=directory,
            binary_source="the Python interpreter",
            env={
                **environ,
                "MACP_EDGE_PORT": str(off_port),
                "MACP_EDGE_METRICS_PORT": "0",
                "MACP_RATE_LIMITS": "off",
            },
        )
        stack.callback(off.stop)
        off.start()
        apps, envoy = start_apps_and_envoy(stack, environ, directory, APPS)
        off_url = f"http://127.0.0.1:{off_port}"
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for app, process in apps:
            process.wait_ready(partial(answers, app.probe), max(0.0, deadline - time.monotonic()))
        off.wait_ready(partial(answers, partial(http_ok, f"{off_url}/healthz")), READY_TIMEOUT_SECONDS)
        while not all(cluster_healthy(envoy.ports.admin, name) for name in APPS):
            if time.monotonic() > deadline:
                raise StartupError("Envoy saw no healthy conversation, token and edge")
            time.sleep(0.1)
        progress("every part is ready")
        by_name = {app.name: (app, process) for app, process in apps}
        admin = seed(directory, envoy.mesh_address, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]).admin
        pids = {name: process.pid for name, (_, process) in by_name.items()}
        pids |= {OFF: off.pid, "envoy": envoy.pid, "postgres": infrastructure.postgres.pid}
        running = RunningSlice(
            front_url=envoy.url,
            edge_url=f"http://{by_name[EDGE.name][0].address}",
            mesh_address=envoy.mesh_address,
            conversation_address=by_name["conversation"][0].address,
            token_address=by_name["token"][0].address,
            database_url=infrastructure.env["MACP_DATABASE_URL"],
            redis_url=infrastructure.env["MACP_REDIS_URL"],
            pids={name: pid for name, pid in pids.items() if pid is not None},
            admin=admin,
            initial_access_token=environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"],
            edge_token=sign_in(envoy.url, admin),
            conversation_token=sign_in(envoy.url, admin, service_audience("conversation")),
        )
        yield TwoEdges(running, off_url, environ)


class RateLimitPaths:
    def __init__(self, edges: TwoEdges, agent_ids: Sequence[uuid.UUID]) -> None:
        self.edges = edges
        self.ids = list(agent_ids)

    def targets(self) -> list[Target]:
        on, off = self.edges.slice.edge_url, self.edges.off_url
        raw = Target(
            "404", "Redis: GCRA script of the three limits (RedisLimiter.check, raw baseline)", self._gcra
        )
        return [
            raw,
            Target("404", "HTTP → edge, rate limits off", partial(self._http, off, agent=False)),
            Target("404", "**HTTP → edge, rate limits on**", partial(self._http, on, agent=False)),
            Target("GET", raw.label, self._gcra),
            Target(
                "GET",
                "HTTP → edge → mesh → conversation, rate limits off",
                partial(self._http, off, agent=True),
            ),
            Target(
                "GET",
                "**HTTP → edge → mesh → conversation, rate limits on**",
                partial(self._http, on, agent=True),
            ),
        ]

    async def _gcra(self, stack: AsyncExitStack, concurrency: int) -> Call:
        """What the edge runs per request: the same settings, keys and script, from this process."""
        redis: aioredis.Redis = aioredis.from_url(self.edges.slice.redis_url, max_connections=concurrency)
        stack.push_async_callback(redis.aclose)
        env = Env(self.edges.environ)
        settings = RateLimitSettings.from_env(env)
        limiter = RedisLimiter(redis, f"bench:{uuid.uuid4().hex[:8]}:")
        keyed = [
            *(("api", limit) for limit in settings.api),
            *(("client:bench", limit) for limit in settings.by_class["internal"]),
            *(("tenant:bench", limit) for limit in settings.tenant),
        ]

        async def call(index: int) -> None:
            if not (await limiter.check(keyed)).admitted:
                raise RuntimeError("the raw GCRA call was refused: its limits are meant to be out of reach")

        return call

    async def _http(self, base_url: str, stack: AsyncExitStack, concurrency: int, *, agent: bool) -> Call:
        client = await Paths._client(stack, concurrency, base_url, self.edges.slice.edge_headers)

        async def call(index: int) -> None:
            if agent:
                _expect(await client.get(f"/v1/agents/{self.ids[index % len(self.ids)]}"), 200)
            else:
                _expect(await client.get("/v1/no-such-route"), 404)

        return call


async def measure(edges: TwoEdges, settings: Settings, say: Callable[[str], None]) -> list[Row]:
    paths = RateLimitPaths(edges, await seed_agents(edges.slice, settings.agents))
    meter = CpuMeter(edges.slice.pids)
    rows: list[Row] = []
    for block, _ in BLOCKS:
        targets = [target for target in paths.targets() if target.method == block]
        for concurrency in settings.concurrency:
            results = await measure_block(targets, concurrency, settings, meter)
            for target, result in zip(targets, results, strict=True):
                rows.append(Row(target, concurrency, result))
                say(f"{block} c={concurrency} {target.label}: {result.count} ok, p50 {result.p50_ms:.3f} ms")
    return rows


def report(rows: Sequence[Row], settings: Settings) -> str:
    parts = [
        f"Rate limiting at the edge: closed loop, at most {settings.requests:,} requests or "
        f"{settings.max_seconds:g} s per row, taken in {settings.rounds} turns with the other rows of "
        f'its block, after {settings.warmup} warm-up requests; `+p50 ms` of an "on" row is what the '
        'limits add over the "off" row above it.',
    ]
    for block, title in BLOCKS:
        parts += [
            "",
            title,
            "",
            block_table(
                [r for r in rows if r.target.method == block],
                settings.concurrency,
                SERVER_COLUMNS,
                CPU_COLUMNS,
            ),
        ]
    parts += failures(rows)
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    return run_slice_bench(
        "rate_limit",
        (__doc__ or "").splitlines()[0],
        LoadDefaults(2000, 6.0, 100, 4, (1, 8), 50),
        lambda say: running_edges(progress=say),
        measure,
        report,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
