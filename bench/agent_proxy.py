"""`python -m bench.agent_proxy`: what the agent proxy adds to a streamed generation, beside the raw
baselines, in one run.

Rows:

- time to first token (TTFT), p50 and p99, at concurrency 1 and 50, of (a) the official anthropic
  SDK streaming straight from the local provider server (the baseline: the SDK's own request and
  parsing) and (b) `AgentProxyService.Generate` through Envoy's mesh listener, whose agent proxy
  makes that same SDK call; the difference is the added TTFT (target: at most 2 ms p50 at
  concurrency 1);
- tokens/s at concurrency 50 with 1,000-token answers of (a) the SDK direct, (b) Generate through
  Envoy and the agent proxy (target: at least 70% of (a)), and (c) a raw grpc.aio server stream of
  the same 1,000 deltas with nothing behind it (the gRPC floor).

The parts run as `macp up` runs them, each in its own process on 127.0.0.1: the real infrastructure,
the token service, the agent proxy, the provider server (`python -m services.provider_server`),
Envoy, and the raw gRPC baseline server (this module with `--serve-raw`). Every Generate carries a
real access token; the load is closed-loop and bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import anthropic
import grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as pb_grpc
from macp.common.v1.agent_settings_pb2 import GenerationSettings
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from bench.service_tokens import service_token
from bench.slice import book_behavior, cluster_healthy, parts_environ, start_apps_and_envoy
from bench.stats import added_latency_row, machine_line, markdown_table
from services.agent_proxy.service import GENERATE_SCOPE
from services.runtime.context import RpcContext
from services.runtime.registry import PROVIDER_SERVER
from services.stack.config import free_port
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir
from services.stack.probes import answers
from services.stack.process import ManagedProcess, StartupError
from services.stack.secrets import local_secrets
from services.stack.seed import LocalAdmin, seed

APPS = ("token", "agent-proxy", PROVIDER_SERVER.name)
SHORT_MODEL = "echo-1"  # natural answers, 12 to 48 tokens
LONG_MODEL = "bench-long"  # booked to answer exactly LONG_TOKENS tokens
LONG_TOKENS = 1000
PROMPT = "Tell the three of us what to build next."
TIMEOUT_SECONDS = 60.0

Stream = Callable[[str], Awaitable[tuple[float, int]]]  # model -> (seconds to first token, tokens)


@dataclass(frozen=True)
class Bench:
    provider_url: str
    mesh_address: str
    raw_address: str
    token: str
    tenant_id: str


# --- the parts ----------------------------------------------------------------------------------


def _environ(infrastructure_env: dict[str, str]) -> dict[str, str]:
    environ = parts_environ(infrastructure_env, ("token", "agent-proxy"), ("MACP_PROVIDER_SERVER_PORT",))
    environ["MACP_LOG_LEVEL"] = "warning"
    return environ


def _generate_token(mesh_address: str, admin: LocalAdmin, initial_access_token: str) -> str:
    """A token of the seeded admin user for the agent proxy, with `agents:generate`, the way the
    orchestrator holds one (bench/service_tokens.py)."""

    async def get() -> str:
        async with grpc.aio.insecure_channel(mesh_address) as channel:
            stub = token_grpc.TokenServiceStub(channel)
            return await service_token(
                stub,
                initial_access_token,
                admin.tenant_id,
                admin.username,
                admin.password,
                "agent-proxy",
                GENERATE_SCOPE,
            )

    return asyncio.run(get())


@contextmanager
def running_parts(progress: Callable[[str], None]) -> Iterator[Bench]:
    with ExitStack() as stack:
        infrastructure = stack.enter_context(ephemeral_infrastructure(progress=progress))
        directory = stack.enter_context(scratch_data_dir("macp-bench-agent-proxy-"))
        environ = _environ(infrastructure.env)
        environ.update(local_secrets(directory, environ))
        raw_port = free_port()
        raw = ManagedProcess(
            "raw-grpc",
            (sys.executable, "-m", "bench.agent_proxy", "--serve-raw", str(raw_port)),
            data_dir=directory,
            binary_source="the Python interpreter",
            env=environ,
        )
        stack.callback(raw.stop)
        raw.start()
        apps, envoy = start_apps_and_envoy(stack, environ, directory, APPS)
        for app, process in apps:
            process.wait_ready(partial(answers, app.probe), TIMEOUT_SECONDS)
            progress(f"{app.name} ready on {app.address}")
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not all(cluster_healthy(envoy.ports.admin, name) for name in ("token", "agent-proxy")):
            if time.monotonic() > deadline:
                raise StartupError("Envoy saw no healthy token and agent-proxy clusters")
            time.sleep(0.1)
        admin = seed(directory, envoy.mesh_address, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]).admin
        token = _generate_token(envoy.mesh_address, admin, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"])
        provider_url = f"http://127.0.0.1:{environ['MACP_PROVIDER_SERVER_PORT']}"
        book_behavior(provider_url, LONG_MODEL, f"tokens={LONG_TOKENS}")
        yield Bench(provider_url, envoy.mesh_address, f"127.0.0.1:{raw_port}", token, admin.tenant_id)


# --- the raw gRPC baseline server -----------------------------------------------------------------


class RawStream(pb_grpc.AgentProxyServiceServicer):
    """LONG_TOKENS one-word deltas and a completion, with nothing behind them: no interceptors,
    no provider, no queue. What any gRPC server stream of these messages costs."""

    async def Generate(
        self,
        request: pb.GenerateRequest,
        context: RpcContext,
    ) -> AsyncIterator[pb.GenerateResponse]:
        for index in range(LONG_TOKENS):
            yield pb.GenerateResponse(text_delta=pb.TextDelta(text=" word", index=index))
        yield pb.GenerateResponse(completion=pb.GenerateCompletion(finish_reason=pb.FINISH_REASON_STOP))


async def serve_raw(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_AgentProxyServiceServicer_to_server(RawStream(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- the calls --------------------------------------------------------------------------------------


def _request(bench: Bench, model: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        turn_id=str(uuid.uuid4()),
        conversation_id=str(uuid.uuid4()),
        agent_id=str(uuid.uuid4()),
        tenant_id=bench.tenant_id,
        provider="local",
        model=model,
        messages=[pb.ChatMessage(role=pb.CHAT_ROLE_USER, text=PROMPT)],
        generation=GenerationSettings(max_tokens=4096),
    )


def sdk_direct(client: anthropic.AsyncAnthropic) -> Stream:
    async def call(model: str) -> tuple[float, int]:
        started = time.perf_counter()
        first = 0.0
        tokens = 0
        stream = await client.messages.create(
            model=model, max_tokens=4096, messages=[{"role": "user", "content": PROMPT}], stream=True
        )
        async for event in stream:
            if event.type == "content_block_delta":
                if not tokens:
                    first = time.perf_counter() - started
                tokens += 1
        return first, tokens

    return call


def grpc_stream(bench: Bench, stub: pb_grpc.AgentProxyServiceStub, with_token: bool = True) -> Stream:
    metadata = (("authorization", f"Bearer {bench.token}"),) if with_token else ()

    async def call(model: str) -> tuple[float, int]:
        started = time.perf_counter()
        first = 0.0
        tokens = 0
        async for response in stub.Generate(
            _request(bench, model), metadata=metadata, timeout=TIMEOUT_SECONDS
        ):
            if response.HasField("text_delta"):
                if not first:
                    first = time.perf_counter() - started
                tokens += len(response.text_delta.text.split())
            else:
                tokens = response.completion.usage.output_tokens or tokens
        return first, tokens

    return call


@dataclass(frozen=True)
class Row:
    ttft: list[float]
    tokens: int
    seconds: float


async def run(stream: Stream, model: str, concurrency: int, total: int) -> Row:
    """`total` streams, `concurrency` at a time, after a warm-up of `concurrency` streams."""
    await asyncio.gather(*(stream(model) for _ in range(concurrency)))
    ttft: list[float] = []
    tokens = 0
    remaining = iter(range(total))

    async def worker() -> None:
        nonlocal tokens
        for _ in remaining:
            first, count = await stream(model)
            ttft.append(first)
            tokens += count

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Row(sorted(ttft), tokens, time.perf_counter() - started)


async def measure(bench: Bench, ttft_calls: int, throughput_streams: int) -> str:
    # The SDK's default connection pool, as the agent proxy uses it.
    client = anthropic.AsyncAnthropic(base_url=bench.provider_url, api_key="local", max_retries=0)
    options = [("grpc.enable_http_proxy", 0)]
    async with (
        client,
        grpc.aio.insecure_channel(bench.mesh_address, options=options) as mesh,
        grpc.aio.insecure_channel(bench.raw_address, options=options) as raw,
    ):
        direct = sdk_direct(client)
        proxied = grpc_stream(bench, pb_grpc.AgentProxyServiceStub(mesh))
        baseline = grpc_stream(bench, pb_grpc.AgentProxyServiceStub(raw), with_token=False)
        ttft_rows = []
        for concurrency in (1, 50):
            calls = ttft_calls if concurrency == 1 else ttft_calls * 5
            sdk = await run(direct, SHORT_MODEL, concurrency, calls)
            proxy = await run(proxied, SHORT_MODEL, concurrency, calls)
            ttft_rows.append(added_latency_row(concurrency, calls, sdk.ttft, proxy.ttft))
        rows = {
            "anthropic SDK → provider server (direct)": await run(direct, LONG_MODEL, 50, throughput_streams),
            "**Generate → Envoy mesh → agent proxy → SDK → provider server**": await run(
                proxied, LONG_MODEL, 50, throughput_streams
            ),
            "raw grpc.aio server stream, same 1,000 deltas (gRPC floor)": await run(
                baseline, LONG_MODEL, 50, throughput_streams
            ),
        }
    sdk_rate = next(iter(rows.values()))
    rate_rows = [
        [name, str(row.tokens), f"{row.seconds:.2f}", f"{row.tokens / row.seconds:,.0f}",
         f"{(row.tokens / row.seconds) / (sdk_rate.tokens / sdk_rate.seconds):.0%}"]
        for name, row in rows.items()
    ]  # fmt: skip
    ttft_table = markdown_table(
        [
            "concurrency",
            "streams",
            "SDK direct p50 ms",
            "SDK direct p99 ms",
            "via proxy p50 ms",
            "via proxy p99 ms",
            "added p50 ms",
            "added p99 ms",
        ],
        ttft_rows,
    )
    rate_table = markdown_table(
        ["path (concurrency 50)", "tokens", "seconds", "tokens/s", "of SDK direct"], rate_rows
    )
    return f"Time to first token:\n\n{ttft_table}\n\nThroughput:\n\n{rate_table}\n\n{machine_line()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttft-calls", type=int, default=200, help="streams per TTFT row at concurrency 1")
    parser.add_argument("--streams", type=int, default=200, help="1,000-token streams per throughput row")
    parser.add_argument("--serve-raw", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_raw is not None:
        asyncio.run(serve_raw(args.serve_raw))
        return 0
    with running_parts(lambda line: print(line, file=sys.stderr)) as bench:
        print(asyncio.run(measure(bench, args.ttft_calls, args.streams)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
