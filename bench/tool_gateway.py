"""`python -m bench.tool_gateway`: what the tool gateway adds to a tool call, beside calling the MCP
server directly with the official SDK, in one run.

Rows, each a closed loop of `calculator.add` calls bounded in count:

- latency p50 and p99 at concurrency 1 and 20 of (a) the `mcp` SDK's `Client` calling the example
  server directly, one session reused for every call (the baseline: the SDK's own request,
  transport and parsing) and (b) `ToolGatewayService.CallTool` through Envoy's mesh listener with a
  real token, whose gateway looks the server up in Postgres, counts the tool's rate limit in Redis,
  makes the same call with the same SDK on its pooled session of the server, publishes the call's
  usage event and audits it; the difference is the added latency (target: at most 5 ms p50 at
  concurrency 1);
- calls/s at concurrency 50 of both, and the CPU per call of the gateway, Envoy and the example
  server, read from /proc.

The parts run as `macp up` runs them, each in its own process on 127.0.0.1: the real
infrastructure, the token service, the tool gateway, Envoy, and the example server
(`python -m services.example_tools calculator`).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import grpc
from google.protobuf import json_format
from macp.token.v1 import token_service_pb2_grpc as token_grpc
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc
from mcp import Client

from bench.cpu import CLIENT, CpuMeter
from bench.service_tokens import service_token
from bench.slice import cluster_healthy, parts_environ, start_apps_and_envoy
from bench.stats import added_latency_row, machine_line, markdown_table
from services.stack.config import free_port
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir
from services.stack.probes import answers
from services.stack.process import ManagedProcess, StartupError
from services.stack.secrets import local_secrets
from services.stack.seed import seed
from services.tool_gateway.service import ADMIN_SCOPE, CALL_SCOPE, READ_SCOPE

APPS = ("token", "tool-gateway")
TIMEOUT_SECONDS = 60.0

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Bench:
    mesh_address: str
    server_url: str
    token: str
    pids: dict[str, int]


def _environ(infrastructure_env: dict[str, str]) -> dict[str, str]:
    # The gateway's MCP endpoint gets a free port too, like its gRPC and metrics ports.
    environ = parts_environ(infrastructure_env, APPS, ("MACP_TOOL_GATEWAY_HTTP_PORT",))
    environ["MACP_LOG_LEVEL"] = "warning"
    # A partial mesh: no conversation service (no agent acts here, so no allow-list is read).
    environ["MACP_TOOL_GATEWAY_NEEDS"] = "token"
    # Nor metering: no quota hold before a call (each call's usage event is still published).
    environ["MACP_TOOL_GATEWAY_QUOTA_HOLDS"] = "off"
    # The rate limit is counted on every call, as in production, but set where it never refuses.
    environ["MACP_TOOL_GATEWAY_TOOL_RATE_LIMIT"] = "1000000/s"
    # The throughput row keeps 50 calls in flight on the one server: above the default cap of 32,
    # which would refuse some of them at once.
    environ["MACP_TOOL_GATEWAY_SERVER_CONCURRENCY"] = "64"
    return environ


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def _register(mesh_address: str, token: str, url: str) -> None:
    async with grpc.aio.insecure_channel(mesh_address) as channel:
        await pb_grpc.ToolGatewayServiceStub(channel).CreateToolServer(
            pb.CreateToolServerRequest(tool_server=pb.ToolServer(name="calc", url=url)),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )


async def _token(
    mesh_address: str, initial_access_token: str, tenant_id: str, user: str, password: str
) -> str:
    async with grpc.aio.insecure_channel(mesh_address) as channel:
        scope = f"{READ_SCOPE} {CALL_SCOPE} {ADMIN_SCOPE}"
        stub = token_grpc.TokenServiceStub(channel)
        return await service_token(
            stub, initial_access_token, tenant_id, user, password, "tool-gateway", scope
        )


@contextmanager
def running_parts(progress: Callable[[str], None]) -> Iterator[Bench]:
    with ExitStack() as stack:
        infrastructure = stack.enter_context(ephemeral_infrastructure(progress=progress))
        directory = stack.enter_context(scratch_data_dir("macp-bench-tool-gateway-"))
        environ = _environ(infrastructure.env)
        environ.update(local_secrets(directory, environ))
        port = free_port()
        server = ManagedProcess(
            "calculator",
            (sys.executable, "-m", "services.example_tools", "calculator", "--port", str(port)),
            data_dir=directory,
            binary_source="the Python interpreter",
            env=environ,
        )
        stack.callback(server.stop)
        server.start()
        server.wait_ready(partial(_listening, port), TIMEOUT_SECONDS)
        apps, envoy = start_apps_and_envoy(stack, environ, directory, APPS)
        for app, process in apps:
            process.wait_ready(partial(answers, app.probe), TIMEOUT_SECONDS)
            progress(f"{app.name} ready on {app.address}")
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not all(cluster_healthy(envoy.ports.admin, name) for name in APPS):
            if time.monotonic() > deadline:
                raise StartupError("Envoy saw no healthy token and tool-gateway clusters")
            time.sleep(0.1)
        initial = environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]
        admin = seed(directory, envoy.mesh_address, initial).admin
        token = asyncio.run(
            _token(envoy.mesh_address, initial, admin.tenant_id, admin.username, admin.password)
        )
        url = f"http://127.0.0.1:{port}/mcp"
        asyncio.run(_register(envoy.mesh_address, token, url))
        pids = {name: process.pid for (app, process) in apps if (name := app.name) == "tool-gateway"}
        pids |= {"envoy": envoy.pid, "calculator": server.pid}
        yield Bench(envoy.mesh_address, url, token, {k: v for k, v in pids.items() if v is not None})


@dataclass
class Row:
    latencies: list[float]
    seconds: float
    cpu: dict[str, float]


async def run(call: Call, concurrency: int, total: int, meter: CpuMeter) -> Row:
    """`total` calls, `concurrency` at a time, after a warm-up of `concurrency` calls."""
    await asyncio.gather(*(call() for _ in range(concurrency)))
    latencies: list[float] = []
    remaining = iter(range(total))

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    before = meter.read()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    spent = CpuMeter.spent(before, meter.read())
    return Row(sorted(latencies), seconds, {name: value / total for name, value in spent.items()})


async def measure(bench: Bench, calls: int) -> str:
    meter = CpuMeter(bench.pids)
    request = pb.CallToolRequest(name="calc__add")
    json_format.ParseDict({"a": 2, "b": 40}, request.arguments)
    metadata = (("authorization", f"Bearer {bench.token}"),)
    async with (
        Client(bench.server_url) as direct,
        grpc.aio.insecure_channel(bench.mesh_address, options=[("grpc.enable_http_proxy", 0)]) as mesh,
    ):
        stub = pb_grpc.ToolGatewayServiceStub(mesh)

        async def sdk() -> None:
            result = await direct.call_tool("add", {"a": 2, "b": 40})
            assert not result.is_error

        async def gateway() -> None:
            reply = await stub.CallTool(request, metadata=metadata, timeout=30)
            assert reply.text == "42"

        latency_rows = []
        for concurrency in (1, 20):
            base = await run(sdk, concurrency, calls, meter)
            through = await run(gateway, concurrency, calls, meter)
            latency_rows.append(added_latency_row(concurrency, calls, base.latencies, through.latencies))
        rates = {
            "mcp SDK Client → example server (direct, one session)": await run(sdk, 50, calls * 2, meter),
            "**CallTool → Envoy mesh → tool gateway → SDK → example server**": await run(
                gateway, 50, calls * 2, meter
            ),
        }
    processes = [CLIENT, *bench.pids]
    rate_rows = [
        [name, str(len(row.latencies)), f"{row.seconds:.2f}", f"{len(row.latencies) / row.seconds:,.0f}"]
        + [f"{row.cpu.get(process, 0.0) * 1e6:,.0f}" for process in processes]
        for name, row in rates.items()
    ]
    latency_table = markdown_table(
        [
            "concurrency",
            "calls",
            "SDK direct p50 ms",
            "SDK direct p99 ms",
            "via gateway p50 ms",
            "via gateway p99 ms",
            "added p50 ms",
            "added p99 ms",
        ],
        latency_rows,
    )
    rate_table = markdown_table(
        ["path (concurrency 50)", "calls", "seconds", "calls/s", *(f"{p} CPU µs/call" for p in processes)],
        rate_rows,
    )
    return f"Latency of one tool call:\n\n{latency_table}\n\nThroughput:\n\n{rate_table}\n\n{machine_line()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per latency row")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    with running_parts(say) as bench:
        print(asyncio.run(measure(bench, args.calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
