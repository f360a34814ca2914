"""`macp demo [--policy P] [--message TEXT] [--provider P --model M] [--tools]`: the product in one
command.

Against the running stack: creates three agents (a chef, a database engineer, a poet, each with
bidding keywords) and a conversation among them under the chosen turn policy, opens the WebSocket
`/v1/ws` through Envoy's front listener, sends one message, and prints the round as it happens:
the bids, who speaks, the streamed text, the usage of each turn and of the round.

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
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from http import HTTPStatus
from typing import Any, TextIO

import websockets

from services.cli.accounts import EXIT_NOT_RUNNING, CliError, add_data_dir, report, running_stack
from services.cli.login import TOKEN_VARIABLE, edge_token
from services.example_tools.audience import CLAIMS_PATH
from services.runtime.registry import EXAMPLE_TOOL_SERVERS

TIMEOUT_SECONDS = 60.0
POLICIES = ("round_robin", "bid", "coordinator", "pipeline")
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


def post_json(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    try:
        with _HTTP.open(request, timeout=TIMEOUT_SECONDS) as answer:
            document: Any = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("message", "")
        except (ValueError, AttributeError):
            message = ""
        raise Refused(f"POST {url}: HTTP {error.code}: {message}", error.code) from None
    except OSError as error:
        raise CliError(f"cannot reach {url}: {getattr(error, 'reason', error)}", EXIT_NOT_RUNNING) from None
    if not isinstance(document, dict):
        raise CliError(f"{url} answered something other than a JSON object")
    return document


class RoundPrinter:
    """Prints one round's events as a person would want to read them."""

    def __init__(self, names: dict[str, str], out: TextIO) -> None:
        self._names = names
        self._out = out
        self._speaking = False

    def _name(self, agent_id: str) -> str:
        return self._names.get(agent_id, agent_id[:8])

    def _line(self, text: str) -> None:
        if self._speaking:
            self._out.write("\n")
            self._speaking = False
        self._out.write(text + "\n")
        self._out.flush()

    def show(self, kind: str, event: dict[str, Any]) -> None:
        payload = event.get(kind, {})
        if kind == "message_accepted":
            self._line(f"user message accepted (sequence {payload.get('sequence')})")
        elif kind == "bidding_opened":
            self._line(f"bidding opens for {len(payload.get('agent_ids', []))} agents")
        elif kind == "bid_results":
            bids = ", ".join(
                f"{self._name(b['agent_id'])} {float(b.get('score', 0)):.2f}"
                + (" (declined)" if b.get("declined") else "")
                for b in payload.get("bids", [])
            )
            winner = self._name(payload["winner_agent_id"]) if payload.get("winner_agent_id") else "nobody"
            self._line(f"bids: {bids} -> {winner} speaks")
        elif kind == "turn_started":
            self._line(f"[{payload.get('turn_index')}] {self._name(payload['agent_id'])}:")
        elif kind == "token_delta":
            self._out.write(payload.get("text", ""))
            self._out.flush()
            self._speaking = True
        elif kind == "tool_call_started":
            arguments = json.dumps(payload.get("arguments", {}), ensure_ascii=False)
            self._line(f"    calls {payload.get('name')} {arguments}")
        elif kind == "tool_call_completed":
            failed = " (failed)" if payload.get("is_error") else ""
            self._line(f"    {payload.get('name')} returned{failed}: {payload.get('result', '')}")
        elif kind == "turn_completed":
            self._line(f"    ({payload.get('outcome', '').removeprefix('TURN_OUTCOME_').lower()})")
        elif kind == "usage":
            dimensions = payload.get("dimensions", {})
            kind_name = payload.get("type", "").removeprefix("USAGE_EVENT_TYPE_").lower()
            self._line(
                f"    usage: {kind_name}, {dimensions.get('input_tokens', 0)} in / "
                f"{dimensions.get('output_tokens', 0)} out tokens, {dimensions.get('duration_ms', 0)} ms"
            )
        elif kind == "error":
            detail = payload.get("detail", {})
            self._line(f"error: {detail.get('reason', '')}: {detail.get('message', '')}")
        elif kind == "round_completed":
            reason = payload.get("reason", "").removeprefix("ROUND_END_REASON_").lower()
            self._line(f"round over after {payload.get('turn_count', 0)} turns ({reason})")


async def converse(ws_url: str, conversation_id: str, text: str, printer: RoundPrinter) -> None:
    message_id = str(uuid.uuid4())
    async with websockets.connect(ws_url, open_timeout=TIMEOUT_SECONDS) as ws:
        await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation_id}))
        await ws.send(
            json.dumps(
                {
                    "action": "message",
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "text": text,
                }
            )
        )
        async with asyncio.timeout(TIMEOUT_SECONDS):
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "error":
                    raise CliError(f"the edge refused {frame.get('action')}: {frame.get('message')}")
                if frame.get("type") != "event":
                    continue
                kind, event = frame["kind"], frame["event"]
                printer.show(kind, event)
                if kind == "round_completed" and event[kind].get("trigger_message_id") == message_id:
                    return


def demo(front_url: str, token: str, args: argparse.Namespace, out: TextIO) -> None:
    """The demo against the edge at `front_url` (blocking: it calls the edge over HTTP first)."""
    if args.tools:
        tools_demo(front_url, token, args, out)
        return
    message = args.message or DEFAULT_MESSAGE
    names: dict[str, str] = {}
    ids: list[str] = []
    for name, prompt, keywords in AGENTS:
        agent = post_json(
            f"{front_url}/v1/agents",
            token,
            {
                "name": name,
                "provider": args.provider,
                "model": args.model,
                "systemPrompt": prompt,
                "bidding": {"keywords": keywords},
            },
        )
        names[agent["id"]] = name
        ids.append(agent["id"])
    draft: dict[str, Any] = {
        "title": f"macp demo ({args.policy})",
        "participantAgentIds": ids,
        "turnPolicy": f"TURN_POLICY_{args.policy.upper()}",
    }
    if args.policy == "coordinator":
        draft["coordinatorAgentId"] = ids[0]
    conversation = post_json(f"{front_url}/v1/conversations", token, draft)
    out.write(f"conversation {conversation['id']}: {', '.join(names.values())} ({args.policy})\n")
    out.write(f"user: {message}\n")
    ws_url = front_url.replace("http", "ws", 1) + f"/v1/ws?access_token={token}"
    asyncio.run(converse(ws_url, conversation["id"], message, RoundPrinter(names, out)))


def tools_demo(front_url: str, token: str, args: argparse.Namespace, out: TextIO) -> None:
    """One agent answering with the example weather server's tool (module docstring)."""
    weather_url = (
        args.tools_url or f"http://127.0.0.1:{os.environ.get(WEATHER.port_variable, WEATHER.port)}/mcp"
    )
    try:
        # The example servers accept only tokens addressed to themselves: the gateway exchanges the
        # caller's token for one (RFC 8693), never passing the caller's own along.
        server = {"name": "weather", "url": weather_url, "auth": "UPSTREAM_AUTH_TOKEN_EXCHANGE"}
        post_json(f"{front_url}/v1/tool-servers", token, server)
        out.write(f"tool server weather registered: {weather_url}\n")
    except Refused as error:
        if error.status != HTTPStatus.CONFLICT:  # registered by an earlier demo: use it
            raise
    agent = post_json(
        f"{front_url}/v1/agents",
        token,
        {
            "name": "Forecaster",
            "provider": args.provider,
            "model": args.model,
            "systemPrompt": "You forecast the weather with your tools. Answer briefly.",
            "allowedTools": ["weather__*"],
        },
    )
    conversation = post_json(
        f"{front_url}/v1/conversations",
        token,
        {
            "title": "macp demo (tools)",
            "participantAgentIds": [agent["id"]],
            "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
        },
    )
    message = args.message or TOOLS_MESSAGE
    out.write(f"conversation {conversation['id']}: Forecaster, allowed weather__*\n")
    out.write(f"user: {message}\n")
    ws_url = front_url.replace("http", "ws", 1) + f"/v1/ws?access_token={token}"
    printer = RoundPrinter({agent["id"]: "Forecaster"}, out)
    asyncio.run(converse(ws_url, conversation["id"], message, printer))
    seen = upstream_claims(weather_url.removesuffix("/mcp") + CLAIMS_PATH)
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
