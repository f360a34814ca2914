"""`macp demo [--policy P] [--message TEXT] [--provider P --model M] [--tools]`: the product in one
command.

Against the running stack: creates three agents (a chef, a database engineer, a poet, each with
bidding keywords) and a conversation among them under the chosen turn policy, opens the WebSocket
`/v1/ws` through Envoy's front listener, sends one message, and prints the round as it happens:
the bids, who speaks, the streamed text, the usage of each turn and of the round. Every call goes
through the Python client (clients/python, `macp_client`), as any outside program's would.

With `--tools`, an agent acts: the example weather MCP server that `macp up` runs is registered
with the tool gateway (once per tenant), a forecaster agent allowed its tools answers a question
by calling it, and the tool call and its result are printed with the answer.

The token is `--token`, else `$MACP_ACCESS_TOKEN`, else the seeded local admin signs in (as
`macp login` does). With no provider key configured the stack answers from its local provider
server (`--provider local --model echo-1`, the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, TextIO, cast

from macp_client import AsyncMacpClient, Event, MacpConnectionError, MacpError
from macp_client.types import ConversationDraft, TurnPolicy

from services.cli.accounts import EXIT_NOT_RUNNING, CliError, add_data_dir, report, running_stack
from services.cli.login import TOKEN_VARIABLE, edge_token
from services.example_tools.audience import CLAIMS_PATH
from services.runtime.registry import EXAMPLE_TOOL_SERVERS

TIMEOUT_SECONDS = 60.0
POLICIES = ("round_robin", "bid", "coordinator", "pipeline", "choreography")
DEFAULT_MESSAGE = "My soup recipe needs a database index and a rhyme: who can help?"
TOOLS_MESSAGE = "Will it rain in Oslo tomorrow? Ask weather__forecast city=Oslo"
WEATHER = next(example for example in EXAMPLE_TOOL_SERVERS if example.server == "weather")
AGENTS = (
    ("Chef", "You are a chef. Answer briefly.", ["soup", "recipe", "cooking"]),
    ("Dba", "You are a database engineer. Answer briefly.", ["database", "index", "query"]),
    ("Poet", "You are a poet. Answer in verse.", ["rhyme", "poem", "verse"]),
)

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", choices=POLICIES, default="bid", help="the turn policy (default bid)")
    parser.add_argument("--message", default=None, help="what the user says")
    parser.add_argument(
        "--tools", action="store_true", help="an agent calls the example weather MCP server's tool"
    )
    parser.add_argument(
        "--tools-url",
        default=None,
        help="the weather server's MCP endpoint (default: the one macp up runs, on port "
        f"${WEATHER.port_variable} or {WEATHER.port})",
    )
    parser.add_argument("--provider", default="local", help="the agents' provider (default local)")
    parser.add_argument("--model", default="echo-1", help="the agents' model (default echo-1)")
    parser.add_argument(
        "--token", default=None, help=f"an access token for the edge (default: ${TOKEN_VARIABLE})"
    )
    add_data_dir(parser)


class Refused(CliError):
    """The edge answered an HTTP error (`status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def refusals(client: AsyncMacpClient, what: str) -> Iterator[None]:
    """The client's errors as the CLI reports them: `what` (`POST /v1/agents`) and the refusal."""
    try:
        yield
    except MacpConnectionError as error:
        raise CliError(f"cannot reach {client.base_url}: {error.message}", EXIT_NOT_RUNNING) from None
    except MacpError as error:
        if error.status is None:  # a WebSocket frame the edge refused
            raise CliError(f"the edge refused {error.action}: {error.message}") from None
        method, _, path = what.partition(" ")
        url = f"{client.base_url}{path}"
        raise Refused(f"{method} {url}: HTTP {error.status}: {error.message}", error.status) from None


class RoundPrinter:
    """Prints one round's events as a person would want to read them. The turns of a CHOREOGRAPHY
    round (`together`) run at once and their text interleaves: each stretch of one turn's text
    starts a line of its own, after the turn's name."""

    def __init__(self, names: dict[str, str], out: TextIO, together: bool = False) -> None:
        self._names = names
        self._out = out
        self._together = together
        self._speaking = False
        # The turn whose text the output is at ("" when none), and each turn's "[index] name".
        self._at_turn = ""
        self._labels: dict[str, str] = {}

    def _name(self, agent_id: str) -> str:
        return self._names.get(agent_id, agent_id[:8])

    def _line(self, text: str) -> None:
        if self._speaking:
            self._out.write("\n")
            self._speaking = False
        self._at_turn = ""
        self._out.write(text + "\n")
        self._out.flush()

    def _text(self, turn_id: str, text: str) -> None:
        if turn_id != self._at_turn:
            if self._speaking:
                self._out.write("\n")
            self._out.write(f"{self._labels.get(turn_id, turn_id[:8])}: ")
            self._at_turn = turn_id
        self._out.write(text)
        self._out.flush()
        self._speaking = True

    def show(self, event: Event) -> None:
        if (accepted := event.message_accepted) is not None:
            self._line(f"user message accepted (sequence {accepted['sequence']})")
        elif (opened := event.bidding_opened) is not None:
            self._line(f"bidding opens for {len(opened['agent_ids'])} agents")
        elif (results := event.bid_results) is not None:
            bids = ", ".join(
                f"{self._name(b['agent_id'])} {float(b['score']):.2f}"
                + (" (declined)" if b["declined"] else "")
                for b in results["bids"]
            )
            winner = self._name(results["winner_agent_id"]) if results["winner_agent_id"] else "nobody"
            if self._together and results["winner_agent_id"]:
                self._line(f"bids: {bids} -> all but the declined speak at once")
            else:
                self._line(f"bids: {bids} -> {winner} speaks")
        elif (started := event.turn_started) is not None:
            label = f"[{started['turn_index']}] {self._name(started['agent_id'])}"
            self._labels[started["turn_id"]] = label
            self._line(f"{label}:")
            self._at_turn = started["turn_id"]
        elif (delta := event.token_delta) is not None:
            self._text(delta["turn_id"], delta["text"])
        elif (call := event.tool_call_started) is not None:
            arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False)
            self._line(f"    calls {call['name']} {arguments}")
        elif (called := event.tool_call_completed) is not None:
            failed = " (failed)" if called["is_error"] else ""
            self._line(f"    {called['name']} returned{failed}: {called['result']}")
        elif (completed := event.turn_completed) is not None:
            outcome = completed["outcome"].removeprefix("TURN_OUTCOME_").lower()
            whose = f"{self._labels.get(completed['turn_id'], '')} " if self._together else ""
            self._line(f"    {whose}({outcome})")
        elif (usage := event.usage) is not None:
            dimensions: dict[str, Any] = dict(usage.get("dimensions", {}))
            kind_name = usage["type"].removeprefix("USAGE_EVENT_TYPE_").lower()
            self._line(
                f"    usage: {kind_name}, {dimensions.get('input_tokens', 0)} in / "
                f"{dimensions.get('output_tokens', 0)} out tokens, {dimensions.get('duration_ms', 0)} ms"
            )
        elif (error := event.error) is not None:
            detail: dict[str, Any] = dict(error.get("detail", {}))
            self._line(f"error: {detail.get('reason', '')}: {detail.get('message', '')}")
        elif (done := event.round_completed) is not None:
            reason = done["reason"].removeprefix("ROUND_END_REASON_").lower()
            self._line(f"round over after {done['turn_count']} turns ({reason})")


async def converse(client: AsyncMacpClient, conversation_id: str, text: str, printer: RoundPrinter) -> None:
    """One message over the WebSocket, its round printed as it happens (resumed after a drop)."""
    with refusals(client, "WS /v1/ws"):
        async with client.websocket() as socket, asyncio.timeout(TIMEOUT_SECONDS):
            async for event in socket.round(conversation_id, text):
                printer.show(event)


def demo(front_url: str, token: str, args: argparse.Namespace, out: TextIO) -> None:
    """The demo against the edge at `front_url` (blocking: it runs its own event loop)."""
    asyncio.run(_demo(front_url, token, args, out))


async def _demo(front_url: str, token: str, args: argparse.Namespace, out: TextIO) -> None:
    # Loopback requests must never go through a proxy from the environment (trust_env off).
    async with AsyncMacpClient(front_url, token=token, timeout=TIMEOUT_SECONDS, trust_env=False) as client:
        if args.tools:
            await tools_demo(client, args, out)
        else:
            await agents_demo(client, args, out)


async def agents_demo(client: AsyncMacpClient, args: argparse.Namespace, out: TextIO) -> None:
    """Three agents and one message under the chosen policy (module docstring)."""
    message = args.message or DEFAULT_MESSAGE
    names: dict[str, str] = {}
    ids: list[str] = []
    for name, prompt, keywords in AGENTS:
        with refusals(client, "POST /v1/agents"):
            agent = await client.create_agent(
                {
                    "name": name,
                    "provider": args.provider,
                    "model": args.model,
                    "systemPrompt": prompt,
                    "bidding": {"keywords": keywords},
                }
            )
        names[agent["id"]] = name
        ids.append(agent["id"])
    draft: ConversationDraft = {
        "title": f"macp demo ({args.policy})",
        "participantAgentIds": ids,
        "turnPolicy": cast(TurnPolicy, f"TURN_POLICY_{args.policy.upper()}"),  # one of POLICIES
    }
    if args.policy == "coordinator":
        draft["coordinatorAgentId"] = ids[0]
    with refusals(client, "POST /v1/conversations"):
        conversation = await client.create_conversation(draft)
    out.write(f"conversation {conversation['id']}: {', '.join(names.values())} ({args.policy})\n")
    out.write(f"user: {message}\n")
    printer = RoundPrinter(names, out, together=args.policy == "choreography")
    await converse(client, conversation["id"], message, printer)


async def tools_demo(client: AsyncMacpClient, args: argparse.Namespace, out: TextIO) -> None:
    """One agent answering with the example weather server's tool (module docstring)."""
    weather_url = (
        args.tools_url or f"http://127.0.0.1:{os.environ.get(WEATHER.port_variable, WEATHER.port)}/mcp"
    )
    try:
        # The example servers accept only tokens addressed to themselves: the gateway exchanges the
        # caller's token for one (RFC 8693), never passing the caller's own along.
        with refusals(client, "POST /v1/tool-servers"):
            await client.create_tool_server(
                {"name": "weather", "url": weather_url, "auth": "UPSTREAM_AUTH_TOKEN_EXCHANGE"}
            )
        out.write(f"tool server weather registered: {weather_url}\n")
    except Refused as error:
        if error.status != HTTPStatus.CONFLICT:  # registered by an earlier demo: use it
            raise
    with refusals(client, "POST /v1/agents"):
        agent = await client.create_agent(
            {
                "name": "Forecaster",
                "provider": args.provider,
                "model": args.model,
                "systemPrompt": "You forecast the weather with your tools. Answer briefly.",
                "allowedTools": ["weather__*"],
            }
        )
    with refusals(client, "POST /v1/conversations"):
        conversation = await client.create_conversation(
            {
                "title": "macp demo (tools)",
                "participantAgentIds": [agent["id"]],
                "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
            }
        )
    message = args.message or TOOLS_MESSAGE
    out.write(f"conversation {conversation['id']}: Forecaster, allowed weather__*\n")
    out.write(f"user: {message}\n")
    printer = RoundPrinter({agent["id"]: "Forecaster"}, out)
    await converse(client, conversation["id"], message, printer)
    claims_url = weather_url.removesuffix("/mcp") + CLAIMS_PATH
    seen = await asyncio.to_thread(upstream_claims, claims_url)
    if seen:
        out.write(f"the weather server was called with {describe_claims(seen[-1])}\n")


def upstream_claims(url: str) -> list[dict[str, Any]]:
    """What the example server shows of the tokens it accepted; none if it shows nothing."""
    try:
        with _HTTP.open(url, timeout=TIMEOUT_SECONDS) as answer:
            shown = json.loads(answer.read())
    except (OSError, ValueError):
        return []
    return shown if isinstance(shown, list) else []


def describe_claims(claims: dict[str, Any]) -> str:
    """A token's claims in words: for whom, addressed to what, through which actors."""
    actors = []
    act = claims.get("act")
    while isinstance(act, dict):
        actors.append(f"agent {act['agent_id']}" if act.get("agent_id") else f"client {act.get('client_id')}")
        act = act.get("act")
    acting = ", acting: " + " <- ".join(actors) if actors else ""
    return f"a token for {claims.get('aud')} (user {claims.get('sub')}, scope {claims.get('scope')}{acting})"


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        demo(stack.front_url, edge_token(stack, args.token), args, sys.stdout)

    return report("macp demo", body)
