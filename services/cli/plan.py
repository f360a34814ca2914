"""`macp plan set --tenant T --plan free|pro|enterprise [--allowance METER=N[@CENTS/BLOCK] ...]`:
the plan a tenant is metered by, set on the running stack.

It calls the edge's `PUT /v1/admin/tenants/{tenant}/plan`, which ends in metering's SetPlan (audited
as PLAN_SET). That route is for operators: the token is `--token`, else one the seeded local admin
client gets with the client-credentials grant (scope `macp:admin`, for the edge and metering).

An enterprise plan names its own allowances, one `--allowance` per meter: `agent_turns=50000` is a
hard limit of 50,000 turns; `agent_turns=50000@40/1000` includes 50,000 and bills 40 cents per 1,000
past them. Meters: agent_turns, orchestrations, voice_seconds, storage_mb, tool_calls.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse
from typing import Any

from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.cli.accounts import (
    EXIT_USAGE,
    CliError,
    RunningStack,
    add_data_dir,
    call_token_service,
    local_admin,
    report,
    running_stack,
)
from services.cli.rest import request_json
from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from services.stack.seed import ADMIN_SCOPE, RPC_TIMEOUT_SECONDS, Metadata

PLANS = ("free", "pro", "enterprise")
METERS = ("agent_turns", "orchestrations", "voice_seconds", "storage_mb", "tool_calls")
_ALLOWANCE = re.compile(r"(?P<meter>[a-z_]+)=(?P<included>[0-9]+)(?:@(?P<cents>[0-9]+)/(?P<block>[0-9]+))?")


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    put = actions.add_parser("set", help="set a tenant's plan", description="set a tenant's plan")
    put.add_argument("--tenant", required=True, help="the tenant's id")
    put.add_argument("--plan", required=True, choices=PLANS, help="the plan to meter it by")
    put.add_argument(
        "--allowance",
        action="append",
        default=[],
        metavar="METER=N[@CENTS/BLOCK]",
        help="an enterprise plan's allowance of one meter (repeat per meter)",
    )
    put.add_argument("--token", default=None, help="an operator's token (default: the local admin client's)")
    put.add_argument("--json", action="store_true", help="print the edge's JSON answer")
    add_data_dir(put)


def allowance(text: str) -> dict[str, Any]:
    """One `--allowance` as the route's PlanAllowance JSON; CliError naming what is wrong."""
    match = _ALLOWANCE.fullmatch(text)
    if match is None:
        raise CliError(f"--allowance: expected METER=N or METER=N@CENTS/BLOCK, got {text!r}", EXIT_USAGE)
    meter = match["meter"]
    if meter not in METERS:
        raise CliError(f"--allowance: meter {meter!r} is not one of {', '.join(METERS)}", EXIT_USAGE)
    document: dict[str, Any] = {"meter": f"METER_{meter.upper()}", "includedQuantity": match["included"]}
    if match["cents"] is None:
        document.update(hardLimit=True, overageBlockSize=1)  # no overage, but a block is at least 1
    else:
        if int(match["block"]) < 1:
            raise CliError(f"--allowance: the block of {meter} must be at least 1", EXIT_USAGE)
        document.update(overagePriceCents=match["cents"], overageBlockSize=match["block"])
    return document


def plan_body(plan: str, allowances: list[str]) -> dict[str, Any]:
    if plan == "enterprise" and not allowances:
        raise CliError("--allowance: an enterprise plan names its allowances (one per meter)", EXIT_USAGE)
    if plan != "enterprise" and allowances:
        raise CliError(f"--allowance: only an enterprise plan sets its own, not {plan}", EXIT_USAGE)
    body: dict[str, Any] = {"plan": plan}
    if allowances:
        body["allowances"] = [allowance(text) for text in allowances]
    return body


def operator_token(stack: RunningStack) -> str:
    """A client-credentials token of the seeded admin client, for the edge and metering."""
    admin = local_admin(stack)

    async def issue(stub: pb_grpc.TokenServiceStub, metadata: Metadata) -> str:
        response: pb.IssueTokenResponse = await stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                client_id=admin.admin_client_id,
                client_secret=admin.admin_client_secret,
                scope=ADMIN_SCOPE,
                audience=[EDGE_AUDIENCE, service_audience("metering")],
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
        return response.access_token

    return call_token_service(stack, issue)


def render(document: dict[str, Any]) -> str:
    plan = document.get("plan", {})
    tier = str(plan.get("tier", "")).removeprefix("TIER_").lower()
    lines = [f"tenant {plan.get('tenantId', '')}: plan {tier}"]
    for item in plan.get("allowances", []):
        meter = str(item.get("meter", "")).removeprefix("METER_").lower()
        included = item.get("includedQuantity", "0")
        if item.get("hardLimit"):
            lines.append(f"  {meter}: {included} a month, hard limit")
        else:
            price = f"{item.get('overagePriceCents', '0')} cents per {item.get('overageBlockSize', '1')}"
            lines.append(f"  {meter}: {included} a month, then {price}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        document = plan_body(args.plan, args.allowance)
        stack = running_stack(args)
        token = args.token or operator_token(stack)
        tenant = urllib.parse.quote(args.tenant, safe="")
        answer = request_json("PUT", f"{stack.front_url}/v1/admin/tenants/{tenant}/plan", token, document)
        print(json.dumps(answer, indent=2, sort_keys=True) if args.json else render(answer))

    return report("macp plan set", body)
