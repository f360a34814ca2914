"""`macp user create --tenant ID --username U [--admin] [--password-stdin]`: a user who signs in with a
password; `--admin` makes them an administrator of their tenant (they may read its audit log)."""

from __future__ import annotations

import argparse

from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.cli.accounts import (
    EXIT_USAGE,
    MIN_PASSWORD_LENGTH,
    CliError,
    add_data_dir,
    call_token_service,
    read_password,
    report,
    running_stack,
)
from services.stack.seed import RPC_TIMEOUT_SECONDS, Metadata


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a local user", description="create a local user")
    create.add_argument("--tenant", required=True, help="the tenant the user belongs to (it must exist)")
    create.add_argument("--username", required=True, help="the name the user signs in with")
    create.add_argument(
        "--admin", action="store_true", help="an administrator of the tenant (may read its audit log)"
    )
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (else asked for)"
    )
    add_data_dir(create)


def run(args: argparse.Namespace) -> int:
    def body() -> None:
        stack = running_stack(args)
        password = read_password(args.password_stdin, confirm=True)
        if len(password) < MIN_PASSWORD_LENGTH:
            raise CliError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters", EXIT_USAGE)

        async def create(stub: pb_grpc.TokenServiceStub, metadata: Metadata) -> pb.CreateUserResponse:
            response: pb.CreateUserResponse = await stub.CreateUser(
                pb.CreateUserRequest(
                    tenant_id=args.tenant, username=args.username, password=password, admin=args.admin
                ),
                metadata=metadata,
                timeout=RPC_TIMEOUT_SECONDS,
            )
            return response

        user = call_token_service(stack, create).user
        print(
            f"user_id: {user.user_id}\ntenant_id: {user.tenant_id}\nusername: {user.username}\n"
            f"admin: {'yes' if user.admin else 'no'}"
        )

    return report("macp user create", body)
