"""`python -m bench.a2a`: time to first token of an A2A streaming message through the edge, beside
the same turn over the WebSocket, in one run on one stack.

The stack is bench/orchestrator.py's: every part its own process on 127.0.0.1, as `macp up` runs
it. Both rows do the same work: one user message to a conversation of one agent (one turn per
message, the local provider's `echo-1`), through Envoy's front listener, the edge, the
orchestrator, the agent proxy and back through the conversation's event log. They differ only in
the face of the edge:

- WebSocket: the `message` frame on an open `/v1/ws` connection → the first `token_delta` frame;
- A2A: `SendStreamingMessage` (JSON-RPC, `POST /a2a/agents/{id}`, `contextId` the conversation)
  → the first server-sent `artifactUpdate` with text. Its client is raw httpx reading the SSE
  lines (the WebSocket row's client is a raw `websockets` connection), so neither row carries an
  SDK's own parsing.

Rows at concurrency 1 and 20, the two faces taking turns per row so they share the machine's
swings; CPU per turn for each process of the stack (and this process, the load generator) says
what the A2A face costs beyond the WebSocket's. Closed loop, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import httpx
from macp_client import AsyncMacpClient

from bench.agent_proxy import PROMPT
from bench.cpu import CLIENT, CpuMeter, cpu_per_turn_table
from bench.orchestrator import (
    SHORT_MODEL,
    TIMEOUT_SECONDS,
    Bench,
    Client,
    Turn,
    ms,
    running_parts,
    timed_loop,
)
from bench.stats import machine_line, markdown_table

# The processes whose CPU is shown (the rest of the stack is summed into "others").
CPU_COLUMNS = (CLIENT, "envoy", "edge", "orchestrator", "agent-proxy", "conversation", "metering", "redis")
Workers = Sequence[Callable[[], Awaitable[Turn]]]


async def one_agent_conversations(bench: Bench, count: int) -> tuple[str, list[str]]:
    """One agent and `count` conversations of it alone (one turn per message); setup, untimed."""
    async with AsyncMacpClient(bench.front_url, token=bench.edge_token, trust_env=False) as client:
        agent = await client.create_agent({"name": "Bench", "provider": "local", "model": SHORT_MODEL})
        conversations = [
            (
                await client.create_conversation(
                    {
                        "participantAgentIds": [agent["id"]],
                        "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
                        "limits": {"maxAgentTurnsPerUserMessage": 1},
                    }
                )
            )["id"]
            for _ in range(count)
        ]
        return agent["id"], conversations


class A2AClient:
    """One HTTP/1.1 connection sending A2A streaming messages to one conversation."""

    def __init__(self, http: httpx.AsyncClient, agent_id: str, conversation_id: str) -> None:
        self._http = http
        self._path = f"/a2a/agents/{agent_id}"
        self._conversation_id = conversation_id

    async def turn(self) -> Turn:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendStreamingMessage",
            "params": {
                "message": {
                    "messageId": str(uuid.uuid4()),
                    "contextId": self._conversation_id,
                    "role": "ROLE_USER",
                    "parts": [{"text": PROMPT}],
                }
            },
        }
        started = time.perf_counter()
        first = 0.0
        tokens = 0
        async with (
            asyncio.timeout(TIMEOUT_SECONDS),
            self._http.stream("POST", self._path, json=body) as response,
        ):
            if response.status_code != 200:
                raise RuntimeError(f"the edge answered {response.status_code}: {await response.aread()!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                result = json.loads(line[5:]).get("result")
                if result is None:
                    raise RuntimeError(f"the A2A stream failed: {line}")
                update = result.get("artifactUpdate")
                if update is not None:
                    text = "".join(part.get("text", "") for part in update["artifact"].get("parts", []))
                    if text and not first:
                        first = time.perf_counter() - started
                    tokens += len(text.split())
                status = result.get("statusUpdate", {}).get("status", {}).get("state")
                if status in ("TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_REJECTED"):
                    if status != "TASK_STATE_COMPLETED":
                        raise RuntimeError(f"the task ended {status}: {line}")
                    return Turn(first, time.perf_counter() - started, tokens)
        raise RuntimeError("the A2A stream ended before its task did")


async def a2a_workers(bench: Bench, http: httpx.AsyncClient, concurrency: int) -> Workers:
    agent_id, conversations = await one_agent_conversations(bench, concurrency)
    return [A2AClient(http, agent_id, conversation).turn for conversation in conversations]


async def ws_workers(bench: Bench, concurrency: int) -> tuple[Workers, list[Client]]:
    _agent_id, conversations = await one_agent_conversations(bench, concurrency)
    clients = await asyncio.gather(*(Client.open(bench, conversation) for conversation in conversations))
    return [client.turn for client in clients], clients


Row = tuple[list[Turn], float, dict[str, float]]


async def measured(meter: CpuMeter, workers: Workers, per_client: int) -> Row:
    """Each worker once untimed (warm: connections, token exchanges, caches), then `per_client`
    turns each, all at once, with the CPU every process spent on those."""
    await asyncio.gather(*(work() for work in workers))
    before = meter.read()
    turns, seconds = await timed_loop(workers, per_client)
    return turns, seconds, CpuMeter.spent(before, meter.read())


def report(rows: dict[str, Row]) -> str:
    out = [
        machine_line(),
        "",
        "Time to first token of one turn, the same turn through each face of the edge:\n",
    ]
    table = []
    for c in (1, 20):
        ws, a2a = rows[f"ws c={c}"][0], rows[f"a2a c={c}"][0]
        ws_first, a2a_first = [t.first_token for t in ws], [t.first_token for t in a2a]
        table.append(
            [
                str(c),
                str(len(a2a)),
                f"{ms(ws_first, 0.5):.2f}",
                f"{ms(ws_first, 0.99):.2f}",
                f"{ms(a2a_first, 0.5):.2f}",
                f"{ms(a2a_first, 0.99):.2f}",
                f"**{ms(a2a_first, 0.5) - ms(ws_first, 0.5):+.2f}**",
                f"**{ms(a2a_first, 0.99) - ms(ws_first, 0.99):+.2f}**",
            ]
        )
    headers = [
        "c",
        "turns",
        "WS p50 ms",
        "WS p99 ms",
        "A2A p50 ms",
        "A2A p99 ms",
        "A2A minus WS p50",
        "A2A minus WS p99",
    ]
    out.append(markdown_table(headers, table))
    out.append("\nCPU per turn (ms), whole turns, by process:\n")
    out.append(cpu_per_turn_table(rows, CPU_COLUMNS))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.a2a", description=__doc__)
    parser.add_argument("--turns", type=int, default=100, help="turns per row at concurrency 1")
    parser.add_argument("--per-client", type=int, default=5, help="turns per client at concurrency 20")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    with running_parts(say) as bench:
        meter = CpuMeter(bench.pids)

        async def measure() -> dict[str, Row]:
            rows: dict[str, Row] = {}
            headers = {"authorization": f"Bearer {bench.edge_token}", "a2a-version": "1.0"}
            async with httpx.AsyncClient(
                base_url=bench.front_url, headers=headers, timeout=TIMEOUT_SECONDS, trust_env=False
            ) as http:
                for c, per in ((1, args.turns), (20, args.per_client)):
                    say(f"c={c}: WebSocket")
                    workers, clients = await ws_workers(bench, c)
                    try:
                        rows[f"ws c={c}"] = await measured(meter, workers, per)
                    finally:
                        await asyncio.gather(*(client.close() for client in clients))
                    say(f"c={c}: A2A")
                    rows[f"a2a c={c}"] = await measured(meter, await a2a_workers(bench, http, c), per)
            return rows

        rows = asyncio.run(measure())
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
