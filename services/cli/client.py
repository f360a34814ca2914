"""`macp client register --name N --class CLASS [--grant G ...] [--scope S ...]`: an OAuth client.

Prints the client id and, for a confidential client, its secret: only this once, as the token
service keeps just its hash. A client of a class other than internal belongs to a tenant:
`--tenant`, else the `local` tenant `macp up` seeded.
"""

from __future__ import annotations

import argparse
import sys

from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.cli import accounts
from services.cli.accounts import add_data_dir, call_token_service, local_admin, report, running_stack
from services.stack.seed import RPC_TIMEOUT_SECONDS, Metadata

CLASSES: dict[str, principal_pb2.ClientClass.ValueType] = {
    "internal": principal_pb2.CLIENT_CLASS_INTERNAL,
    "consumer": principal_pb2.CLIENT_CLASS_CONSUMER,
    "partner": principal_pb2.CLIENT_CLASS_PARTNER,
    "third-party": principal_pb2.CLIENT_CLASS_THIRD_PARTY,
}
GRANTS = (
    "client_credentials",
    "password",
    "refresh_token",
    "authorization_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
)


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    register = actions.add_parser(
        "register", help="register an OAuth client", description="register an OAuth client"
    )
    register.add_argument("--name", required=True, help="the client's human-readable name")
    register.add_argument("--class", dest="client_class", required=True, choices=list(CLASSES))
    register.add_argument(
        "--grant",
        dest="grants",
        action="append",
        choices=GRANTS,
        metavar="GRANT",
        help="a grant type the client may use; repeatable (default: client_credentials); "
        f"one of {', '.join(GRANTS)}",
    )
    register.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        default=[],
        help="scopes the client may ask for; repeatable",
    )
    register.add_argument(
        "--tenant", default=None, help="the client's tenant (default: system for internal, else local)"
    )
    register.add_argument(
        "--public", action="store_true", help="a public client: no secret (token_endpoint_auth_method none)"
    )
    add_data_dir(register)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        tenant: str | None = args.tenant
        if tenant is None:
            tenant = "" if args.client_class == "internal" else local_admin(stack).tenant_id
        metadata = pb.ClientMetadata(
            client_name=args.name,
            client_class=CLASSES[args.client_class],
            grant_types=list(dict.fromkeys(args.grants or ["client_credentials"])),
            scope=" ".join(" ".join(args.scopes).split()),
            token_endpoint_auth_method="none" if args.public else "",
        )
        initial_access_token = accounts.initial_access_token(stack)

        async def register(stub: pb_grpc.TokenServiceStub, _: Metadata) -> pb.RegisterClientResponse:
            response: pb.RegisterClientResponse = await stub.RegisterClient(
                pb.RegisterClientRequest(
                    initial_access_token=initial_access_token, tenant_id=tenant, metadata=metadata
                ),
                timeout=RPC_TIMEOUT_SECONDS,
            )
            return response

        registered = call_token_service(stack, register)
        print(f"client_id: {registered.client_id}")
        if registered.client_secret:
            print(f"client_secret: {registered.client_secret}")
            print("keep the secret now: it is not shown again", file=sys.stderr)

    return report("macp client register", body)
