"""`macp tools list` and `macp tools call NAME --args JSON`: the signed-in tenant's tool catalogue
at the tool gateway (every server's tools, named `<server>__<tool>`) and one call of a tool,
through the running stack's edge (`/v1/tools`, `/v1/tools/{name}/calls`).

`call` prints the tool's text (its structured content, as JSON, when it has no text; `--json` prints
the whole result); a tool that reports a failure of its own exits 1 after printing it. The token
is `--token`, else `$MACP_ACCESS_TOKEN`, else the seeded local admin signs in (as `macp audit`
does).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any, TextIO

from services.cli.accounts import EXIT_REFUSED, EXIT_USAGE, CliError, report, running_stack
from services.cli.login import edge_token
from services.cli.rest import request_json, table
from services.cli.tool_servers import add_token

DESCRIPTION_WIDTH = 60


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the tenant's tool catalogue")
    add_token(listing)
    call = actions.add_parser("call", help="call one tool of the catalogue")
    call.add_argument("name", help="the tool's catalogue name, <server>__<tool>")
    call.add_argument("--args", default="{}", help="its arguments as a JSON object (default: {})")
    add_token(call)


def arguments(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise CliError(f"--args: not JSON ({error})", EXIT_USAGE) from None
    if not isinstance(document, dict):
        raise CliError('--args: must be a JSON object, such as \'{"city": "Lyon"}\'', EXIT_USAGE)
    return document


def render_catalogue(document: dict[str, Any]) -> str:
    rows = [("name", "available", "description")]
    for tool in document.get("tools", []):
        description = " ".join(str(tool.get("description", "")).split())
        if len(description) > DESCRIPTION_WIDTH:
            description = description[: DESCRIPTION_WIDTH - 3] + "..."
        rows.append((tool.get("name", ""), "yes" if tool.get("available") else "no", description or "-"))
    lines = table(rows)
    if len(rows) == 1:
        lines.append("(no tools)")
    for server in document.get("unavailable", []):
        lines.append(f"unavailable: {server.get('serverName', '')}: {server.get('reason', '')}")
    return "\n".join(lines)


def execute(front_url: str, token: str, args: argparse.Namespace, out: TextIO) -> bool:
    """The action against the edge at `front_url`, printed to `out`; False when the called tool
    reported a failure of its own."""
    if args.action == "list":
        catalogue = request_json("GET", f"{front_url}/v1/tools", token)
        print(
            json.dumps(catalogue, indent=2, sort_keys=True) if args.json else render_catalogue(catalogue),
            file=out,
        )
        return True
    body = {"arguments": arguments(args.args)}
    path = urllib.parse.quote(args.name, safe="")
    result = request_json("POST", f"{front_url}/v1/tools/{path}/calls", token, body)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True), file=out)
    else:
        structured = result.get("structuredContent")
        # A tool's structured content mostly repeats its text: shown only in place of a missing text.
        if not result.get("text") and structured is not None:
            print(json.dumps(structured, indent=2, sort_keys=True), file=out)
        else:
            print(result.get("text", ""), file=out)
    return not result.get("isError", False)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        if not execute(stack.front_url, edge_token(stack, args.token), args, sys.stdout):
            raise CliError(f"{args.name} reported an error (above)", EXIT_REFUSED)

    return report(f"macp tools {args.action}", body)
