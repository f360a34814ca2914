"""`python -m bench.orchestrator`: whole turns as a user gets them, beside the raw baselines, in one run.

Every part runs as `macp up` runs it, each its own process on 127.0.0.1: the real infrastructure,
the token, conversation, agent-proxy, metering and orchestrator services, the edge, the local
provider server and Envoy. Clients are real WebSocket clients on Envoy's front listener (`/v1/ws`),
each in a conversation of its own with one agent (limit: one turn per message), signed in as the
seeded admin user. Rows:

- time to first token of a whole turn (message frame sent → first `token_delta` frame: Envoy,
  edge, orchestrator (lease, message stored, quota held, token delegated), agent proxy, provider
  server, and back through the event log) beside the official anthropic SDK streaming the same
  model straight from the provider server, at concurrency 1 and 20; the difference is the added
  TTFT (targets at concurrency 1: at most 5 ms p50 and 15 ms p99);
- tokens/s delivered to 50 concurrent WebSocket clients (1,000-token answers) beside 50 SDK streams
  of the same answers (target: at least 60%);
- whole turns per second at 50 in flight (message → RoundCompleted) beside what a LiteLLM proxy
  sustains for single (non-streamed) calls to the same provider server at 50 in flight (target: at
  least 5 times, with the turns' p99 under 1 s). LiteLLM runs from its own virtual environment,
  which this benchmark creates from bench/litellm-requirements.txt on first use (`--no-litellm`
  skips the row).

The load is closed-loop and bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import grpc
import httpx
import websockets
from macp.common.v1 import principal_pb2
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc
from macp_client import AsyncMacpClient

from bench.agent_proxy import PROMPT, sdk_direct
from bench.slice import book_behavior, cluster_healthy, parts_environ, sign_in, start_apps_and_envoy
from bench.stats import machine_line, markdown_table, percentile
from services.runtime.auth.settings import service_audience
from services.runtime.registry import EDGE, PROVIDER_SERVER, SERVICES
from services.stack.config import free_port
from services.stack.infra import ephemeral_infrastructure, scratch_data_dir
from services.stack.kafka import KafkaStorage
from services.stack.probes import answers
from services.stack.process import ManagedProcess, StartupError
from services.stack.secrets import local_secrets
from services.stack.seed import seed

REPO = Path(__file__).resolve().parent.parent
APPS = (*(spec.name for spec in SERVICES), EDGE.name, PROVIDER_SERVER.name)
CLUSTERS = (*(spec.name for spec in SERVICES), EDGE.name)
SHORT_MODEL = "echo-1"  # natural answers, 12 to 48 tokens
LONG_MODEL = "bench-long"  # booked to answer exactly LONG_TOKENS tokens
LONG_TOKENS = 1000
TIMEOUT_SECONDS = 120.0
LITELLM_VENV = REPO / ".venv-litellm"
# An environment that already has them (bench/litellm-requirements.txt), instead of making one.
LITELLM_VENV_VARIABLE = "MACP_BENCH_LITELLM_VENV"
LITELLM_KEY = f"sk-bench-{uuid.uuid4().hex}"
LITELLM_REQUIREMENTS = REPO / "bench" / "litellm-requirements.txt"


@dataclass(frozen=True)
class Bench:
    front_url: str
    provider_url: str
    edge_token: str
    directory: Path
    pids: dict[str, int]  # every process of the stack by name: the apps, Envoy, the infrastructure

    @property
    def ws_url(self) -> str:
        return self.front_url.replace("http://", "ws://") + f"/v1/ws?access_token={self.edge_token}"


def _environ(infrastructure_env: dict[str, str]) -> dict[str, str]:
    apps = [*(spec.name for spec in SERVICES), "edge"]
    # Every port on a free one, the HTTP faces (the tool gateway's /mcp) too: a default port
    # another run holds would stop the stack from starting.
    http_faces = [spec.http_port_variable for spec in SERVICES if spec.http_port is not None]
    environ = parts_environ(infrastructure_env, apps, ("MACP_PROVIDER_SERVER_PORT", *http_faces))
    environ["MACP_LOG_LEVEL"] = "warning"
    # The path is measured, not the limits (see bench/slice.py).
    for variable in ("MACP_RATE_LIMIT_API", "MACP_RATE_LIMIT_INTERNAL", "MACP_RATE_LIMIT_TENANT"):
        environ[variable] = "1000000/s"
    return environ


@contextmanager
def running_parts(
    progress: Callable[[str], None],
    kafka_storage: KafkaStorage = "memory",
    overrides: Mapping[str, str] | None = None,
) -> Iterator[Bench]:
    """The whole stack; `kafka_storage="s3"` keeps Kafka's log in the S3 emulation, as `macp up`
    does; `overrides` are settings of every process (e.g. `macp up`'s log level)."""
    with ExitStack() as stack:
        infrastructure = stack.enter_context(
            ephemeral_infrastructure(kafka_storage=kafka_storage, progress=progress)
        )
        directory = stack.enter_context(scratch_data_dir("macp-bench-orchestrator-"))
        environ = _environ(infrastructure.env) | dict(overrides or {})
        environ.update(local_secrets(directory, environ))
        apps, envoy = start_apps_and_envoy(stack, environ, directory, APPS)
        for app, process in apps:
            process.wait_ready(partial(answers, app.probe), TIMEOUT_SECONDS)
            progress(f"{app.name} ready on {app.address}")
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not all(cluster_healthy(envoy.ports.admin, name) for name in CLUSTERS):
            if time.monotonic() > deadline:
                raise StartupError("Envoy never saw every cluster healthy")
            time.sleep(0.2)
        admin = seed(directory, envoy.mesh_address, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]).admin
        provider_url = f"http://127.0.0.1:{environ['MACP_PROVIDER_SERVER_PORT']}"
        book_behavior(provider_url, LONG_MODEL, f"tokens={LONG_TOKENS}")
        asyncio.run(
            _pro_plan(envoy.mesh_address, admin.tenant_id, environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"])
        )
        pids = {app.name: process.pid for app, process in apps} | {"envoy": envoy.pid}
        pids |= {part.name: part.pid for part in infrastructure.parts}
        running = {name: pid for name, pid in pids.items() if pid is not None}
        yield Bench(envoy.url, provider_url, sign_in(envoy.url, admin), directory, running)


async def _pro_plan(mesh_address: str, tenant_id: str, initial_access_token: str) -> None:
    """Put the seeded tenant on the PRO plan (included turns, then overage, never refused): the
    benchmark runs thousands of turns, past the FREE plan's hard limit. As an operator would: an
    internal client holding `macp:admin` calls Metering.SetPlan."""
    async with grpc.aio.insecure_channel(mesh_address) as channel:
        tokens = token_grpc.TokenServiceStub(channel)
        client = await tokens.RegisterClient(
            token_pb.RegisterClientRequest(
                initial_access_token=initial_access_token,
                metadata=token_pb.ClientMetadata(
                    client_name="bench.orchestrator operator",
                    client_class=principal_pb2.CLIENT_CLASS_INTERNAL,
                    grant_types=["client_credentials"],
                    scope="macp:admin",
                ),
            ),
            timeout=10,
        )
        issued = await tokens.IssueToken(
            token_pb.IssueTokenRequest(
                grant_type=token_pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                client_id=client.client_id,
                client_secret=client.client_secret,
                scope="macp:admin",
                audience=[service_audience("metering")],
            ),
            timeout=10,
        )
        await metering_grpc.MeteringServiceStub(channel).SetPlan(
            metering_pb.SetPlanRequest(tenant_id=tenant_id, tier=principal_pb2.TIER_PRO),
            metadata=(("authorization", f"Bearer {issued.access_token}"),),
            timeout=10,
        )


# --- WebSocket clients ----------------------------------------------------------------------------


async def new_conversations(bench: Bench, count: int, model: str) -> list[str]:
    """`count` conversations of one agent each (one turn per message), created over REST through
    the Python client (setup: no benchmark times it)."""
    async with AsyncMacpClient(bench.front_url, token=bench.edge_token, trust_env=False) as client:
        agent = await client.create_agent(
            {"name": "Bench", "provider": "local", "model": model, "generation": {"maxTokens": 4096}}
        )
        ids = []
        for _ in range(count):
            created = await client.create_conversation(
                {
                    "participantAgentIds": [agent["id"]],
                    "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
                    "limits": {"maxAgentTurnsPerUserMessage": 1},
                }
            )
            ids.append(created["id"])
        return ids


@dataclass
class Turn:
    first_token: float  # seconds from the message frame to the first delta
    total: float  # seconds from the message frame to the round's end
    tokens: int


class Client:
    """One WebSocket connection subscribed to its own conversation."""

    def __init__(self, ws: Any, conversation_id: str) -> None:
        self._ws = ws
        self._conversation_id = conversation_id

    @classmethod
    async def open(cls, bench: Bench, conversation_id: str) -> Client:
        ws = await websockets.connect(bench.ws_url, max_size=None, open_timeout=TIMEOUT_SECONDS)
        await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation_id}))
        return cls(ws, conversation_id)

    async def turn(self) -> Turn:
        message_id = str(uuid.uuid4())
        frame = {"action": "message", "conversation_id": self._conversation_id, "message_id": message_id}
        started = time.perf_counter()
        await self._ws.send(json.dumps({**frame, "text": PROMPT}))
        async with asyncio.timeout(TIMEOUT_SECONDS):
            return await self._until_round_end(message_id, started)

    async def _until_round_end(self, message_id: str, started: float) -> Turn:
        first = 0.0
        tokens = 0
        while True:
            event = json.loads(await self._ws.recv())
            if event.get("type") == "error":
                raise RuntimeError(f"the edge refused a frame: {event}")
            kind = event.get("kind")
            if kind == "token_delta":
                if not first:
                    first = time.perf_counter() - started
                tokens += len(event["event"]["token_delta"]["text"].split())
            elif kind == "error":
                raise RuntimeError(f"the round failed: {event['event']['error']}")
            elif kind == "round_completed" and event["event"][kind]["trigger_message_id"] == message_id:
                return Turn(first, time.perf_counter() - started, tokens)

    async def close(self) -> None:
        await self._ws.close()


Workers = Sequence[Callable[[], Awaitable[Turn]]]
Loop = Callable[[Workers, int], Awaitable[tuple[list[Turn], float]]]


async def closed_loop(workers: Workers, per_worker: int) -> tuple[list[Turn], float]:
    """Each worker once untimed (warm: connections, token exchanges, caches), then `per_worker`
    times back to back, all workers at once; the timed turns and their wall time."""
    await asyncio.gather(*(work() for work in workers))
    return await timed_loop(workers, per_worker)


async def timed_loop(workers: Workers, per_worker: int) -> tuple[list[Turn], float]:
    """Each worker `per_worker` times back to back, all at once; the turns and their wall time."""
    turns: list[Turn] = []

    async def run(work: Callable[[], Awaitable[Turn]]) -> None:
        for _ in range(per_worker):
            turns.append(await work())

    started = time.perf_counter()
    await asyncio.gather(*(run(work) for work in workers))
    return turns, time.perf_counter() - started


async def ws_turns(
    bench: Bench, model: str, concurrency: int, per_client: int, loop: Loop = closed_loop
) -> tuple[list[Turn], float]:
    conversations = await new_conversations(bench, concurrency, model)
    clients = await asyncio.gather(*(Client.open(bench, c) for c in conversations))
    try:
        return await loop([client.turn for client in clients], per_client)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


# --- the SDK baseline ------------------------------------------------------------------------------


async def sdk_turns(
    bench: Bench, model: str, concurrency: int, per_client: int, loop: Loop = closed_loop
) -> tuple[list[Turn], float]:
    async with anthropic.AsyncAnthropic(
        base_url=bench.provider_url, api_key="local", max_retries=0, timeout=TIMEOUT_SECONDS
    ) as client:
        call = sdk_direct(client)  # the agent-proxy benchmark's own SDK stream

        async def one() -> Turn:
            started = time.perf_counter()
            first, tokens = await call(model)
            return Turn(first, time.perf_counter() - started, tokens)

        return await loop([one] * concurrency, per_client)


# --- LiteLLM --------------------------------------------------------------------------------------


def litellm_binary(progress: Callable[[str], None]) -> Path:
    """LiteLLM's proxy from its own virtual environment (its pins clash with ours), made on first use."""
    existing = os.environ.get(LITELLM_VENV_VARIABLE)
    if existing:
        return Path(existing) / "bin" / "litellm"
    binary = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / ".requirements"
    wanted = LITELLM_REQUIREMENTS.read_text()
    if binary.exists() and stamp.exists() and stamp.read_text() == wanted:
        return binary
    progress(f"creating {LITELLM_VENV.name} from {LITELLM_REQUIREMENTS.name} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(LITELLM_REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return binary


@dataclass(frozen=True)
class Litellm:
    url: str
    pid: int


@contextmanager
def running_litellm(
    bench: Bench, progress: Callable[[str], None], model: str = SHORT_MODEL
) -> Iterator[Litellm]:
    """A LiteLLM proxy (one worker) that serves `model` from the provider server."""
    binary = litellm_binary(progress)
    config = bench.directory / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: anthropic/{model}\n"
        f"      api_base: {bench.provider_url}\n"
        "      api_key: local\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    # LiteLLM refuses to start unauthenticated; the key is this run's, the calls send it.
    environ = {**os.environ, "LITELLM_LOG": "ERROR", "NO_DOCS": "True", "LITELLM_MASTER_KEY": LITELLM_KEY}
    process = ManagedProcess(
        "litellm",
        (
            str(binary),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ),
        data_dir=bench.directory,
        binary_source="bench/litellm-requirements.txt",
        env=environ,
    )
    process.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while True:
            try:
                if httpx.get(f"{url}/health/liveliness", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StartupError("the LiteLLM proxy never answered /health/liveliness")
            time.sleep(0.5)
        progress(f"litellm ready on {url}")
        assert process.pid is not None  # started above
        yield Litellm(url, process.pid)
    finally:
        process.stop()


def litellm_client(url: str, concurrency: int) -> httpx.AsyncClient:
    """An HTTP client of the LiteLLM proxy at `url`, one connection per call in flight, keyed."""
    return httpx.AsyncClient(
        base_url=url,
        headers={"authorization": f"Bearer {LITELLM_KEY}"},
        timeout=TIMEOUT_SECONDS,
        trust_env=False,
        limits=httpx.Limits(max_connections=concurrency),
    )


def litellm_body(model: str, *, stream: bool = False) -> dict[str, Any]:
    """A chat completion of the benchmark's prompt, as the LiteLLM rows send it."""
    messages = [{"role": "user", "content": PROMPT}]
    return {"model": model, "messages": messages, "max_tokens": 4096, "stream": stream}


async def litellm_calls(url: str, concurrency: int, per_client: int) -> tuple[list[Turn], float]:
    async with litellm_client(url, concurrency) as http:
        body = litellm_body(SHORT_MODEL)

        async def one() -> Turn:
            started = time.perf_counter()
            answer = await http.post("/v1/chat/completions", json=body)
            answer.raise_for_status()
            elapsed = time.perf_counter() - started
            return Turn(elapsed, elapsed, answer.json()["usage"]["completion_tokens"])

        return await closed_loop([one] * concurrency, per_client)


# --- the report -----------------------------------------------------------------------------------


def ms(values: Sequence[float], fraction: float) -> float:
    return percentile(sorted(values), fraction) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.orchestrator", description=__doc__)
    parser.add_argument("--ttft-turns", type=int, default=100, help="turns per TTFT row at concurrency 1")
    parser.add_argument(
        "--streams", type=int, default=50, help="clients of the tokens/s rows (one turn each)"
    )
    parser.add_argument("--sustained", type=int, default=6, help="turns per client of the sustained rows")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM baseline")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    with running_parts(say) as bench:

        async def measure() -> dict[str, tuple[list[Turn], float]]:
            rows: dict[str, tuple[list[Turn], float]] = {}
            per = max(1, args.ttft_turns // 20)
            say("rows: SDK and WebSocket at c=1, at c=20, long answers, sustained")
            rows["sdk c=1"] = await sdk_turns(bench, SHORT_MODEL, 1, args.ttft_turns)
            say("ws c=1")
            rows["ws c=1"] = await ws_turns(bench, SHORT_MODEL, 1, args.ttft_turns)
            say("sdk c=20")
            rows["sdk c=20"] = await sdk_turns(bench, SHORT_MODEL, 20, per)
            say("ws c=20")
            rows["ws c=20"] = await ws_turns(bench, SHORT_MODEL, 20, per)
            say("sdk long")
            rows["sdk long"] = await sdk_turns(bench, LONG_MODEL, args.streams, 1)
            say("ws long")
            rows["ws long"] = await ws_turns(bench, LONG_MODEL, args.streams, 1)
            say("ws sustained")
            rows["ws sustained"] = await ws_turns(bench, SHORT_MODEL, 50, args.sustained)
            return rows

        say("measuring")
        rows = asyncio.run(measure())
        if not args.no_litellm:
            with running_litellm(bench, say) as litellm:
                rows["litellm"] = asyncio.run(litellm_calls(litellm.url, 50, args.sustained))
    print(report(rows))
    return 0


def report(rows: dict[str, tuple[list[Turn], float]]) -> str:
    out = [machine_line(), ""]
    ttft = []
    for c in (1, 20):
        sdk, ws = rows[f"sdk c={c}"][0], rows[f"ws c={c}"][0]
        sdk_first, ws_first = [t.first_token for t in sdk], [t.first_token for t in ws]
        ttft.append(
            [
                str(c),
                str(len(ws)),
                f"{ms(sdk_first, 0.5):.2f}",
                f"{ms(sdk_first, 0.99):.2f}",
                f"{ms(ws_first, 0.5):.2f}",
                f"{ms(ws_first, 0.99):.2f}",
                f"**{ms(ws_first, 0.5) - ms(sdk_first, 0.5):.2f}**",
                f"**{ms(ws_first, 0.99) - ms(sdk_first, 0.99):.2f}**",
            ]
        )
    out.append("Time to first token of a whole turn:\n")
    headers = [
        "c",
        "turns",
        "SDK p50 ms",
        "SDK p99 ms",
        "WS turn p50 ms",
        "WS turn p99 ms",
        "added p50",
        "added p99",
    ]
    out.append(markdown_table(headers, ttft))
    sdk_long, sdk_seconds = rows["sdk long"]
    ws_long, ws_seconds = rows["ws long"]
    sdk_rate = sum(t.tokens for t in sdk_long) / sdk_seconds
    ws_rate = sum(t.tokens for t in ws_long) / ws_seconds
    out.append("\nTokens/s, 1,000-token answers, all at once:\n")
    out.append(
        markdown_table(
            ["path", "streams", "tokens", "seconds", "tokens/s", "of SDK"],
            [
                [
                    "anthropic SDK → provider server",
                    str(len(sdk_long)),
                    str(sum(t.tokens for t in sdk_long)),
                    f"{sdk_seconds:.2f}",
                    f"{sdk_rate:,.0f}",
                    "100%",
                ],
                [
                    "**WebSocket clients → Envoy → edge → orchestrator → agent proxy → provider**",
                    str(len(ws_long)),
                    str(sum(t.tokens for t in ws_long)),
                    f"{ws_seconds:.2f}",
                    f"{ws_rate:,.0f}",
                    f"**{ws_rate / sdk_rate:.0%}**",
                ],
            ],
        )
    )
    sustained, seconds = rows["ws sustained"]
    lines = [
        [
            "whole turns over WebSocket (message → RoundCompleted)",
            str(len(sustained)),
            f"{ms([t.total for t in sustained], 0.5):.1f}",
            f"{ms([t.total for t in sustained], 0.99):.1f}",
            f"{len(sustained) / seconds:.1f}",
        ],
    ]
    if "litellm" in rows:
        calls, call_seconds = rows["litellm"]
        lines.append(
            [
                "LiteLLM proxy, single non-streamed calls",
                str(len(calls)),
                f"{ms([t.total for t in calls], 0.5):.1f}",
                f"{ms([t.total for t in calls], 0.99):.1f}",
                f"{len(calls) / call_seconds:.1f}",
            ]
        )
        ratio = (len(sustained) / seconds) / (len(calls) / call_seconds)
        lines.append(["**whole turns/s over LiteLLM calls/s**", "", "", "", f"**{ratio:.1f}x**"])
    out.append("\nSustained at 50 in flight (closed loop):\n")
    out.append(markdown_table(["path", "n", "p50 ms", "p99 ms", "per s"], lines))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
