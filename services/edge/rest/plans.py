"""REST route for an operator to set a tenant's plan: `PUT /v1/admin/tenants/{tenant}/plan` →
MeteringService.SetPlan.

Operators only: the caller's token needs `macp:admin`, which only an internal client's
client-credentials token carries, and which a token exchange never passes on. So the edge does not
exchange it: it hands the operator's own token to metering, which is why that token names
metering's audience (`urn:macp:service:metering`) beside the edge's. Metering checks the scope
again and audits the change (PLAN_SET) in the tenant whose plan it is.

The body: `{"plan": "free" | "pro" | "enterprise", "allowances": [PlanAllowance, ...]}`, the
allowances for enterprise only (one per meter), as SetPlan takes them.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import grpc
from macp.common.v1 import principal_pb2
from macp.metering.v1 import metering_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.errors import HttpError
from services.edge.http import message_response, parse_document, read_json_object
from services.edge.rest.conventions import WRITE_ERRORS, invalid, query
from services.edge.routes import ApiRoute, Content
from services.edge.schema import schema_name
from services.runtime.auth.settings import service_audience
from services.runtime.principal import current_caller

ADMIN_SCOPE = "macp:admin"
METERING_AUDIENCE = service_audience("metering")
PLANS: dict[str, principal_pb2.Tier.ValueType] = {
    "free": principal_pb2.TIER_FREE,
    "pro": principal_pb2.TIER_PRO,
    "enterprise": principal_pb2.TIER_ENTERPRISE,
}
FIELDS = ("plan", "allowances")

PLAN_CHANGE = Content(
    "PlanChange",
    {
        "type": "object",
        "required": ["plan"],
        "additionalProperties": False,
        "properties": {
            "plan": {"type": "string", "enum": list(PLANS), "description": "the plan to meter the tenant by"},
            "allowances": {
                "type": "array",
                "maxItems": 6,
                "items": {"$ref": f"#/components/schemas/{schema_name(pb.PlanAllowance.DESCRIPTOR)}"},
                "description": "enterprise only, and required there: one allowance per meter",
            },
        },
    },
)


def plan_request(tenant_id: str, document: dict[str, Any]) -> pb.SetPlanRequest:
    """The SetPlan request a body asks for; 400 naming the field at fault."""
    for key in document:
        if key not in FIELDS:
            raise invalid(f"{key}: unknown field (expected: {', '.join(FIELDS)})")
    plan = document.get("plan")
    if not isinstance(plan, str) or plan not in PLANS:
        raise invalid(f"plan: one of {', '.join(PLANS)}, got {plan!r}")
    given = document.get("allowances", [])
    if not isinstance(given, list) or not all(isinstance(item, dict) for item in given):
        raise invalid("allowances: a list of objects")
    allowances = []
    for index, item in enumerate(given):
        try:
            allowances.append(parse_document(item, pb.PlanAllowance()))
        except HttpError as error:
            raise invalid(f"allowances[{index}]: {error.message}") from None
    return pb.SetPlanRequest(tenant_id=tenant_id, tier=PLANS[plan], allowances=allowances)


async def set_plan(request: Request) -> Response:
    edge = edge_context(request)
    # The body is checked first, as on every JSON route (its shape is public, in the OpenAPI
    # document); the scope before anything is changed.
    query(request, ())
    document = await read_json_object(request, edge.settings.max_body_bytes)
    set_request = plan_request(request.path_params["tenant"], document)
    caller = current_caller()
    if ADMIN_SCOPE not in caller.principal.scopes:
        raise HttpError(
            HTTPStatus.FORBIDDEN,
            "PERMISSION_DENIED",
            f"setting a plan needs scope {ADMIN_SCOPE} (an operator's client-credentials token)",
        )
    try:
        reply: pb.SetPlanResponse = await edge.metering.SetPlan(
            set_request, metadata=(("authorization", f"Bearer {caller.token}"),), timeout=edge.timeout
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        raise HttpError(
            HTTPStatus.FORBIDDEN,
            "PERMISSION_DENIED",
            f"the operator's token is not accepted by metering: it must name the audience "
            f"{METERING_AUDIENCE} beside the edge's ({error.details()})",
        ) from None
    return message_response(reply)


ROUTES = [
    ApiRoute(
        method="PUT",
        path="/v1/admin/tenants/{tenant}/plan",
        operation_id="setTenantPlan",
        summary="Set the plan a tenant is metered by (operators only: scope macp:admin)",
        handler=set_plan,
        body=PLAN_CHANGE,
        response=pb.SetPlanResponse,
        errors=WRITE_ERRORS,
        tags=("admin",),
    ),
]
