"""`macp tenant create NAME [--tier free|pro|enterprise]`: a tenant on the running stack."""

from __future__ import annotations

import argparse

from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.cli.accounts import add_data_dir, call_token_service, report, running_stack
from services.stack.seed import RPC_TIMEOUT_SECONDS, Metadata

TIERS: dict[str, principal_pb2.Tier.ValueType] = {
    "free": principal_pb2.TIER_FREE,
    "pro": principal_pb2.TIER_PRO,
    "enterprise": principal_pb2.TIER_ENTERPRISE,
}


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a tenant", description="create a tenant")
    create.add_argument("name", help="the tenant's id")
    create.add_argument("--tier", choices=sorted(TIERS), default="free", help="billing tier (default: free)")
    create.add_argument("--display-name", default="", help="a human-readable name (default: the id)")
    add_data_dir(create)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)

        async def create(stub: pb_grpc.TokenServiceStub, metadata: Metadata) -> pb.CreateTenantResponse:
            response: pb.CreateTenantResponse = await stub.CreateTenant(
                pb.CreateTenantRequest(
                    tenant_id=args.name, tier=TIERS[args.tier], display_name=args.display_name
                ),
                metadata=metadata,
                timeout=RPC_TIMEOUT_SECONDS,
            )
            return response

        tenant = call_token_service(stack, create).tenant
        print(tenant.tenant_id)

    return report("macp tenant create", body)
