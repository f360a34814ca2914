"""`macp audit [--start T] [--end T] [--action A] [--subject S] [--limit N] [--page-token P]`: the
signed-in tenant's audit log, newest first, from the running stack's edge (`GET /v1/audit`).

Only a tenant's admin users may read it (the seeded local admin is one). The token is `--token`,
else `$MACP_ACCESS_TOKEN`, else the seeded local admin signs in (as `macp login` does). Prints a
table, or the edge's JSON with `--json`; a further page is printed as the command that fetches it.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from services.cli.accounts import add_data_dir, report, running_stack
from services.cli.login import TOKEN_VARIABLE, edge_token
from services.cli.usage import get_json
from services.runtime.audit import ACTIONS


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to 1000, got {text!r}")
    return int(text)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", default="", help="only events at or after this time, RFC 3339")
    parser.add_argument("--end", default="", help="only events before this time, RFC 3339")
    parser.add_argument("--action", default="", choices=("", *ACTIONS), help="only this action")
    parser.add_argument("--subject", default="", help="only events of this user, client or agent id")
    parser.add_argument(
        "--limit", type=_page_size, default=50, help="events per page, 1 to 1000 (default 50)"
    )
    parser.add_argument("--page-token", default="", help="the page after a previous one (printed at its end)")
    parser.add_argument(
        "--token", default=None, help=f"an access token for the edge (default: ${TOKEN_VARIABLE})"
    )
    parser.add_argument("--json", action="store_true", help="print the edge's JSON answer")
    add_data_dir(parser)


def audit_url(front_url: str, args: argparse.Namespace) -> str:
    pairs = (
        ("start_time", args.start),
        ("end_time", args.end),
        ("action", args.action),
        ("subject", args.subject),
        ("page_token", args.page_token),
    )
    query = {"page_size": str(args.limit), **{name: value for name, value in pairs if value}}
    return f"{front_url}/v1/audit?{urllib.parse.urlencode(query)}"


def _actors(event: dict[str, Any]) -> str:
    """The chain as `agent:a1 > user:u1`, most recent actor first (as the token's `act` nests)."""
    chain = event.get("actorChain", [])
    return " > ".join(
        f"{str(a.get('type', '')).removeprefix('ACTOR_TYPE_').lower()}:{a.get('id', '')}" for a in chain
    )


def render_audit(document: dict[str, Any]) -> str:
    rows = [("time", "action", "outcome", "subject", "actors", "client", "resource", "request")]
    for event in document.get("events", []):
        rows.append(
            (
                event.get("time", ""),
                event.get("action", ""),
                event.get("outcome", ""),
                event.get("subject", ""),
                _actors(event) or "-",
                event.get("clientId", "") or "-",
                event.get("resource", ""),
                event.get("requestId", "") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no events)")
    if document.get("nextPageToken"):
        lines.append(f"more: macp audit --page-token {document['nextPageToken']} (with the same filters)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        token = edge_token(stack, args.token)
        document = get_json(audit_url(stack.front_url, args), token)
        print(json.dumps(document, indent=2, sort_keys=True) if args.json else render_audit(document))

    return report("macp audit", body)
