"""What the account commands (`macp tenant|user|client|login`) share: finding the running stack,
the local admin credentials `macp up` seeded, and one-line errors.

The running stack is found through `<data_dir>/run/stack.json` (`--data-dir`, else MACP_DATA_DIR,
else ./.macp); admin RPCs go to the token service through Envoy's mesh port (gRPC) with a
client-credentials token of the seeded INTERNAL admin client; logins go to the edge's
/oauth2/token on Envoy's front port. Exit codes: 0 done, 1 refused by the stack (the error it
gave), 2 bad input, 3 no running stack or no seeded credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.settings import Env, data_dir
from services.stack import seed, stackfile

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
MIN_PASSWORD_LENGTH = 8
INITIAL_ACCESS_TOKEN = "MACP_TOKEN_INITIAL_ACCESS_TOKEN"


class CliError(Exception):
    """A failure to report as one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the data dir of the running `macp up` (default: $MACP_DATA_DIR, else ./.macp)",
    )


@dataclass(frozen=True)
class RunningStack:
    data_dir: Path
    front_url: str
    mesh_address: str


def running_stack(args: argparse.Namespace) -> RunningStack:
    """The stack `macp up` runs for the chosen data dir; CliError when none is ready."""
    override: Path | None = args.data_dir
    directory = override.expanduser().resolve() if override else data_dir(Env(os.environ))
    document = stackfile.read(directory)
    if not document or not stackfile.alive(document.get("supervisor")):
        raise CliError(f"no MACP stack is running for {directory}; start it with `macp up`", EXIT_NOT_RUNNING)
    if document.get("state") != "ready":
        raise CliError(
            f"the MACP stack for {directory} is still starting; try again shortly", EXIT_NOT_RUNNING
        )
    endpoints = document.get("endpoints")
    if not isinstance(endpoints, dict) or not endpoints.get("front") or not endpoints.get("mesh"):
        raise CliError(
            f"{stackfile.stack_file(directory)} names no endpoints; restart the stack with this `macp up`",
            EXIT_NOT_RUNNING,
        )
    return RunningStack(directory, str(endpoints["front"]), str(endpoints["mesh"]))


def local_admin(stack: RunningStack) -> seed.LocalAdmin:
    admin = seed.load(stack.data_dir)
    if admin is None:
        raise CliError(
            f"no local admin credentials in {seed.admin_file(stack.data_dir)}; `macp up` seeds them at start",
            EXIT_NOT_RUNNING,
        )
    return admin


def initial_access_token(stack: RunningStack) -> str:
    """The token the stack registers clients with: MACP_TOKEN_INITIAL_ACCESS_TOKEN when set here,
    else the one `macp up` generated into `<data_dir>/secrets.json`."""
    token = os.environ.get(INITIAL_ACCESS_TOKEN, "")
    if token:
        return token
    path = stack.data_dir / "secrets.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = None
    token = stored.get(INITIAL_ACCESS_TOKEN, "") if isinstance(stored, dict) else ""
    if not token:
        raise CliError(
            f"no initial access token: set {INITIAL_ACCESS_TOKEN} or keep {path}", EXIT_NOT_RUNNING
        )
    return str(token)


def call_token_service(
    stack: RunningStack,
    action: Callable[[pb_grpc.TokenServiceStub, seed.Metadata], Awaitable[T]],
) -> T:
    """Run `action` with a stub on the mesh and the admin's bearer metadata; RPC errors as CliError."""
    admin = local_admin(stack)

    async def go() -> T:
        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(stack.mesh_address, options=options) as channel:
            stub = pb_grpc.TokenServiceStub(channel)
            metadata = await seed.admin_token(stub, admin.admin_client_id, admin.admin_client_secret)
            return await action(stub, metadata)

    try:
        return asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(
                f"the token service does not answer at {stack.mesh_address}: {seed.rpc_message(error)}",
                EXIT_NOT_RUNNING,
            ) from None
        raise CliError(seed.rpc_message(error)) from None


def read_password(from_stdin: bool, *, confirm: bool) -> str:
    """A password from the first line of stdin, or asked for on a terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("--password-stdin: stdin gave no password", EXIT_USAGE)
        return password
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password on; pipe it to --password-stdin", EXIT_USAGE)
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != password:
        raise CliError("the passwords do not match", EXIT_USAGE)
    return password


def report(prog: str, body: Callable[[], None]) -> int:
    """Run a command's body; a CliError (or Ctrl-C) becomes one line on stderr and its exit code."""
    try:
        body()
    except CliError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
