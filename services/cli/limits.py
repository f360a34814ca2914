"""`macp limits [--json]`: the rate limits the running stack's edge applies (the API as a whole, each
client class, each tenant) and where the signed-in caller stands on its own (requests left, seconds
until full again).

It reads `GET /v1/rate-limits`, which counts no request, so looking never uses up a limit. The
token is `--token`, else `$MACP_ACCESS_TOKEN`, else the seeded local admin signs in (as `macp
usage` does).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from services.cli.accounts import add_data_dir, report, running_stack
from services.cli.login import TOKEN_VARIABLE, edge_token
from services.cli.usage import get_json

# Window lengths in seconds -> how `MACP_RATE_LIMIT_*` spells them.
_WINDOWS = {1: "s", 60: "min", 3600: "hour", 86400: "day"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token", default=None, help=f"an access token for the edge (default: ${TOKEN_VARIABLE})"
    )
    parser.add_argument("--json", action="store_true", help="print the edge's JSON answer")
    add_data_dir(parser)


def rate(limit: dict[str, Any]) -> str:
    """A limit as its setting is written: `1000/s burst 2000`, `50/min`."""
    window = int(limit["windowSeconds"])
    text = f"{limit['limit']}/{_WINDOWS.get(window, f'{window}s')}"
    return text if limit["burst"] == limit["limit"] else f"{text} burst {limit['burst']}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render_limits(document: dict[str, Any]) -> str:
    lines = [
        f"caller: client {document.get('clientId', '')} ({document.get('clientClass', '')}), "
        f"tenant {document.get('tenantId', '')}; limits counted in {document.get('counting', '')}"
    ]
    standing: list[tuple[str, ...]] = [("scope", "limit", "rate", "remaining", "full again in")]
    for limit in document.get("limits", []):
        standing.append(
            (
                limit["scope"],
                limit["name"],
                rate(limit),
                str(limit["remaining"]),
                f"{limit['resetSeconds']} s",
            )
        )
    lines += _table(standing)
    if not document.get("admitted", True):
        lines.append(f"  refused now: retry after {document.get('retryAfterSeconds', 1)} s")
    configured = document.get("configured", {})
    rows: list[tuple[str, ...]] = [("scope", "applies to", "rate")]
    rows += [("global", "the whole API", rate(limit)) for limit in configured.get("global", [])]
    for name, limits in configured.get("classes", {}).items():
        rows.append(("class", f"each {name} client", " + ".join(rate(limit) for limit in limits)))
    rows += [("tenant", "each tenant", rate(limit)) for limit in configured.get("tenant", [])]
    lines += ["configured:", *_table(rows)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        token = edge_token(stack, args.token)
        document = get_json(f"{stack.front_url}/v1/rate-limits", token)
        print(json.dumps(document, indent=2, sort_keys=True) if args.json else render_limits(document))

    return report("macp limits", body)
