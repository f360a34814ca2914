"""`macp webhooks create|list|show|delete|deliveries`: the signed-in tenant's conversation webhooks,
through the running stack's edge (`/v1/webhooks`, docs/webhooks.md).

`create` subscribes `--url` (https; http to a loopback host where the stack allows it, as `macp up`
does) to one conversation's events (`--conversation`) or to every conversation of the tenant, for
the event kinds named by `--event` (repeated; every kind but token_delta when none is named). It
prints the signing secret: the only time anything shows it. `show` adds the delivery state;
`deliveries` lists the deliveries that failed at least once (`--dead` for the dead letters only).
The token is `--token`, else `$MACP_ACCESS_TOKEN`, else the seeded local admin signs in.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any, TextIO

from services.cli.accounts import report, running_stack
from services.cli.login import edge_token
from services.cli.rest import request_json, table
from services.cli.tool_servers import add_token

PAGE_SIZE = 100
DEAD_LETTERED = "WEBHOOK_DELIVERY_STATUS_DEAD_LETTERED"


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="subscribe an endpoint", description=__doc__)
    create.add_argument("--url", required=True, help="where deliveries are POSTed (https)")
    create.add_argument("--conversation", default="", help="one conversation's id (default: all of them)")
    create.add_argument(
        "--event",
        action="append",
        default=[],
        help="an event kind to receive (repeat; default: all but token_delta)",
    )
    add_token(create)
    listing = actions.add_parser("list", help="list the tenant's subscriptions")
    add_token(listing)
    for name, help_text in (("show", "one subscription and its delivery state"), ("delete", "remove one")):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("id", help="the subscription's id")
        add_token(action)
    deliveries = actions.add_parser("deliveries", help="a subscription's failed deliveries, newest first")
    deliveries.add_argument("id", help="the subscription's id")
    deliveries.add_argument("--dead", action="store_true", help="only the dead letters")
    add_token(deliveries)


def render_subscriptions(subscriptions: list[dict[str, Any]]) -> str:
    rows = [("id", "url", "conversation", "events", "last success", "failures")]
    for item in subscriptions:
        state = item.get("deliveryState", {})
        rows.append(
            (
                item.get("id", ""),
                item.get("url", ""),
                item.get("conversationId", "") or "(all)",
                ",".join(item.get("eventKinds", [])),
                state.get("lastSuccessTime", "-"),
                str(state.get("consecutiveFailures", 0)),
            )
        )
    lines = table(rows)
    if not subscriptions:
        lines.append("(no webhook subscriptions)")
    return "\n".join(lines)


def render_deliveries(deliveries: list[dict[str, Any]]) -> str:
    rows = [("id", "conversation", "event", "kind", "status", "attempts", "last failure")]
    for item in deliveries:
        rows.append(
            (
                item.get("id", ""),
                item.get("conversationId", ""),
                item.get("eventId", ""),
                item.get("eventKind", ""),
                str(item.get("status", "")).removeprefix("WEBHOOK_DELIVERY_STATUS_").lower(),
                str(item.get("attempts", 0)),
                item.get("lastFailureReason", ""),
            )
        )
    lines = table(rows)
    if not deliveries:
        lines.append("(no failed deliveries)")
    return "\n".join(lines)


def all_subscriptions(front_url: str, token: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page_token = ""
    while True:
        query = {"page_size": str(PAGE_SIZE), **({"page_token": page_token} if page_token else {})}
        page = request_json("GET", f"{front_url}/v1/webhooks?{urllib.parse.urlencode(query)}", token)
        found.extend(page.get("webhookSubscriptions", []))
        page_token = page.get("nextPageToken", "")
        if not page_token:
            return found


def execute(front_url: str, token: str, args: argparse.Namespace, out: TextIO) -> None:
    """The action against the edge at `front_url`, printed to `out`."""
    path = f"{front_url}/v1/webhooks"
    if args.action == "create":
        body: dict[str, Any] = {"url": args.url, "eventKinds": args.event}
        if args.conversation:
            body["conversationId"] = args.conversation
        created = request_json("POST", path, token, body)
        if args.json:
            print(json.dumps(created, indent=2, sort_keys=True), file=out)
            return
        print(render_subscriptions([created]), file=out)
        print(f"signing secret (shown this once; keep it): {created['secret']}", file=out)
        return
    if args.action == "list":
        found = all_subscriptions(front_url, token)
        print(
            json.dumps(found, indent=2, sort_keys=True) if args.json else render_subscriptions(found),
            file=out,
        )
        return
    item = f"{path}/{urllib.parse.quote(args.id, safe='')}"
    if args.action == "delete":
        request_json("DELETE", item, token)
        print(f"deleted webhook subscription {args.id}", file=out)
    elif args.action == "show":
        shown = request_json("GET", item, token)
        print(
            json.dumps(shown, indent=2, sort_keys=True) if args.json else render_subscriptions([shown]),
            file=out,
        )
    else:
        query = {"page_size": str(PAGE_SIZE), **({"status": DEAD_LETTERED} if args.dead else {})}
        page = request_json("GET", f"{item}/deliveries?{urllib.parse.urlencode(query)}", token)
        listed = page.get("deliveries", [])
        print(
            json.dumps(listed, indent=2, sort_keys=True) if args.json else render_deliveries(listed), file=out
        )


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        execute(stack.front_url, edge_token(stack, args.token), args, sys.stdout)

    return report(f"macp webhooks {args.action}", body)
