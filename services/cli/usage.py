"""`macp usage [--group-by G] [--start T] [--end T] [--user-id U] [--agent-id A] [--invoice [--month
YYYY-MM]]`: the signed-in tenant's usage (or its invoice preview) from the running stack's edge.

The `cost` column is each group's list price at the tenant's plan, before the plan's allowance
(docs/plans.md, "Usage and its cost"): what the usage is worth, not what it adds to the invoice.

The token is `--token`, else `$MACP_ACCESS_TOKEN`, else the seeded local admin signs in with the
password grant (as `macp login` does). Prints a table, or the edge's JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from services.cli.accounts import EXIT_NOT_RUNNING, CliError, add_data_dir, report, running_stack
from services.cli.login import TOKEN_VARIABLE, edge_token

TIMEOUT_SECONDS = 15.0
GROUPS = ("agent", "conversation", "model", "event_type", "day")
COLUMNS = (
    ("agentTurns", "turns"),
    ("orchestrations", "orch."),
    ("voiceSeconds", "voice s"),
    ("storageMb", "MB"),
    ("apiCalls", "api"),
    ("inputTokens", "in tok"),
    ("outputTokens", "out tok"),
    ("eventCount", "events"),
)

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group-by", choices=GROUPS, default="event_type", help="how to group (default event_type)"
    )
    parser.add_argument("--start", default="", help="period start, RFC 3339 (default: this month's)")
    parser.add_argument("--end", default="", help="period end, exclusive, RFC 3339 (default: next month's)")
    parser.add_argument("--user-id", default="", help="only this user's usage")
    parser.add_argument("--agent-id", default="", help="only this agent's usage")
    parser.add_argument("--invoice", action="store_true", help="show the invoice preview instead")
    parser.add_argument(
        "--month", default="", help="the invoice's billing month, YYYY-MM (default: this one)"
    )
    parser.add_argument(
        "--token", default=None, help=f"an access token for the edge (default: ${TOKEN_VARIABLE})"
    )
    parser.add_argument("--json", action="store_true", help="print the edge's JSON answer")
    add_data_dir(parser)


def get_json(url: str, token: str) -> dict[str, Any]:
    """GET `url` with the bearer token; the JSON answer, or CliError with the edge's message."""
    request = urllib.request.Request(
        url, headers={"authorization": f"Bearer {token}", "accept": "application/json"}
    )
    try:
        with _HTTP.open(request, timeout=TIMEOUT_SECONDS) as answer:
            document: Any = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            failure = json.loads(error.read())
        except ValueError:
            failure = {}
        message = failure.get("message", "") if isinstance(failure, dict) else ""
        raise CliError(f"HTTP {error.code}: {message}" if message else f"HTTP {error.code}") from None
    except (OSError, ValueError) as error:
        raise CliError(f"cannot reach {url}: {getattr(error, 'reason', error)}", EXIT_NOT_RUNNING) from None
    if not isinstance(document, dict):
        raise CliError(f"{url} answered something other than a JSON object")
    return document


def usage_url(front_url: str, args: argparse.Namespace) -> str:
    if args.invoice:
        query = {"month": args.month} if args.month else {}
        return f"{front_url}/v1/usage/invoice-preview?{urllib.parse.urlencode(query)}"
    query = {"group_by": args.group_by}
    query.update(
        {
            key: value
            for key, value in (
                ("start", args.start),
                ("end", args.end),
                ("user_id", args.user_id),
                ("agent_id", args.agent_id),
            )
            if value
        }
    )
    return f"{front_url}/v1/usage?{urllib.parse.urlencode(query)}"


def _row(key: str, totals: dict[str, Any]) -> tuple[str, ...]:
    cost = f"{int(totals.get('costCents', 0)) / 100:.2f}"
    return (key, *(str(totals.get(k, 0)) for k, _ in COLUMNS), cost)


def render_usage(document: dict[str, Any]) -> str:
    rows = [("group", *(title for _, title in COLUMNS), "cost USD")]
    for group in document.get("groups", []):
        rows.append(_row(group.get("key") or "(none)", group["totals"]))
    rows.append(_row("TOTAL", document.get("totals", {})))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def render_invoice(document: dict[str, Any]) -> str:
    month = document.get("period", {}).get("startTime", "")[:7]
    state = "final" if document.get("final") else "so far"
    lines = [f"invoice preview {month} ({document.get('tier', '')}, {state})"]
    for item in document.get("lineItems", []):
        lines.append(
            f"  {item['description']:<38} {item['quantity']:>10} {item['unit']:<14}"
            f" included {item['includedQuantity']:>8}  overage {item.get('overageQuantity', '0'):>8}"
            f"  {int(item.get('amountCents', 0)) / 100:>9.2f} USD"
        )
    lines.append(f"  {'total':<38} {int(document.get('totalCents', 0)) / 100:>84.2f} USD")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        token = edge_token(stack, args.token)
        document = get_json(usage_url(stack.front_url, args), token)
        if args.json:
            print(json.dumps(document, indent=2, sort_keys=True))
        else:
            print(render_invoice(document) if args.invoice else render_usage(document))

    return report("macp usage", body)
