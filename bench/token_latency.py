"""Token issue and exchange latency, p50 and p99, through Envoy, beside their raw baselines.

Three blocks, one per operation, each row one hop longer than the row above it:

- client credentials (RFC 6749 4.4) with the seeded admin client;
- password grant with the seeded admin user and the public CLI client (scrypt is the point of it:
  its raw row is one scrypt verification with the service's own parameters);
- token exchange (RFC 8693): the admin user's edge token for one addressed to the conversation
  service, by an internal client registered for the exchange (as the edge's own is).

Paths: the raw work in this process (RSA-2048 sign of the same claims; scrypt; RSA verify + sign);
gRPC to the token service's own port; gRPC through Envoy's mesh listener; and the product path,
HTTP `POST /oauth2/token` on Envoy's front listener → edge → mesh → token service. The slice is
bench/slice.py's: every part its own process, on 127.0.0.1. Load is closed-loop and bounded in
count and time per row (bench/load.py); rows of a block take turns so they share the machine's swings.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial

import grpc
import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from bench.agent_slice import Row, Settings, Target, block_table, failures, measure_block
from bench.cpu import CLIENT, CpuMeter
from bench.load import Call
from bench.slice import RunningSlice, running_slice
from bench.stats import machine_line
from services.runtime.auth import jwt
from services.runtime.auth.settings import USER_SCOPES, service_audience
from services.stack.process import StartupError
from services.stack.seed import ADMIN_SCOPE, TOKEN_AUDIENCE

TIMEOUT_SECONDS = 10.0
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CONVERSATION_AUDIENCE = service_audience("conversation")
BLOCKS = ("client credentials", "password", "token exchange")
SERVER_COLUMNS = ("token", "edge", "envoy", "postgres")
CPU_COLUMNS = (CLIENT, *SERVER_COLUMNS)


@dataclass(frozen=True)
class ExchangeClient:
    client_id: str
    client_secret: str


async def register_exchange_client(running: RunningSlice) -> ExchangeClient:
    async with grpc.aio.insecure_channel(running.token_address) as channel:
        reply = await pb_grpc.TokenServiceStub(channel).RegisterClient(
            pb.RegisterClientRequest(
                initial_access_token=running.initial_access_token,
                metadata=pb.ClientMetadata(
                    client_name="bench exchange",
                    client_class=principal_pb2.CLIENT_CLASS_INTERNAL,
                    grant_types=[EXCHANGE_GRANT],
                    scope=" ".join(USER_SCOPES),
                ),
            ),
            timeout=TIMEOUT_SECONDS,
        )
    return ExchangeClient(reply.client_id, reply.client_secret)


class Paths:
    def __init__(self, running: RunningSlice, exchanger: ExchangeClient) -> None:
        self.slice = running
        self.admin = running.admin
        self.exchanger = exchanger
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def targets(self, block: str) -> list[Target]:
        token, mesh, front = self.slice.token_address, self.slice.mesh_address, self.slice.front_url
        grpc_call = {
            "client credentials": self._issue_client_credentials,
            "password": self._issue_password,
            "token exchange": self._exchange,
        }[block]
        return [
            Target(block, f"raw: {RAW_LABELS[block]} in-process", partial(self._raw, block)),
            Target(block, "gRPC → token", partial(grpc_call, token)),
            Target(block, "gRPC → Envoy mesh → token", partial(grpc_call, mesh)),
            Target(
                block,
                "**HTTP /oauth2/token → Envoy front → edge → mesh → token**",
                partial(self._http, block, front),
            ),
        ]

    # --- raw: the cryptographic work each operation cannot avoid -----------------------------

    async def _raw(self, block: str, stack: AsyncExitStack, concurrency: int) -> Call:
        claims = {"iss": "bench", "sub": "u", "aud": TOKEN_AUDIENCE, "exp": 2**31, "iat": 0, "jti": "x"}
        signed = jwt.sign(claims, private_key=self.key, kid="bench")
        public = {"bench": self.key.public_key()}
        salt = uuid.uuid4().bytes

        async def call(index: int) -> None:
            if block == "password":
                hashlib.scrypt(b"password", salt=salt, n=2**14, r=8, p=1, dklen=32, maxmem=64 * 1024 * 1024)
                return
            if block == "token exchange":
                jwt.verify(signed, keys=public, issuer="bench", audience=TOKEN_AUDIENCE, now=1.0)
            jwt.sign({**claims, "jti": str(index)}, private_key=self.key, kid="bench")

        return call

    # --- gRPC ----------------------------------------------------------------------------------

    @staticmethod
    async def _stub(stack: AsyncExitStack, address: str) -> pb_grpc.TokenServiceStub:
        channel = grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        await stack.enter_async_context(channel)
        return pb_grpc.TokenServiceStub(channel)

    async def _issue_client_credentials(self, address: str, stack: AsyncExitStack, concurrency: int) -> Call:
        stub = await self._stub(stack, address)
        request = pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id=self.admin.admin_client_id,
            client_secret=self.admin.admin_client_secret,
            scope=ADMIN_SCOPE,
            audience=[TOKEN_AUDIENCE],
        )

        async def call(index: int) -> None:
            await stub.IssueToken(request, timeout=TIMEOUT_SECONDS)

        return call

    async def _issue_password(self, address: str, stack: AsyncExitStack, concurrency: int) -> Call:
        stub = await self._stub(stack, address)
        request = pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_PASSWORD,
            client_id=self.admin.cli_client_id,
            username=self.admin.username,
            password=self.admin.password,
        )

        async def call(index: int) -> None:
            await stub.IssueToken(request, timeout=TIMEOUT_SECONDS)

        return call

    async def _exchange(self, address: str, stack: AsyncExitStack, concurrency: int) -> Call:
        stub = await self._stub(stack, address)
        request = pb.ExchangeTokenRequest(
            client_id=self.exchanger.client_id,
            client_secret=self.exchanger.client_secret,
            subject_token=self.slice.edge_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
            audience=[CONVERSATION_AUDIENCE],
        )

        async def call(index: int) -> None:
            await stub.ExchangeToken(request, timeout=TIMEOUT_SECONDS)

        return call

    # --- HTTP at the front listener --------------------------------------------------------------

    def _form(self, block: str) -> dict[str, str]:
        if block == "client credentials":
            return {
                "grant_type": "client_credentials",
                "client_id": self.admin.admin_client_id,
                "client_secret": self.admin.admin_client_secret,
                "scope": ADMIN_SCOPE,
                "resource": TOKEN_AUDIENCE,
            }
        if block == "password":
            return {
                "grant_type": "password",
                "client_id": self.admin.cli_client_id,
                "username": self.admin.username,
                "password": self.admin.password,
            }
        return {
            "grant_type": EXCHANGE_GRANT,
            "client_id": self.exchanger.client_id,
            "client_secret": self.exchanger.client_secret,
            "subject_token": self.slice.edge_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": CONVERSATION_AUDIENCE,
        }

    async def _http(self, block: str, base_url: str, stack: AsyncExitStack, concurrency: int) -> Call:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_SECONDS, limits=limits, trust_env=False)
        )
        form = self._form(block)

        async def call(index: int) -> None:
            response = await client.post("/oauth2/token", data=form)
            if response.status_code != 200:
                raise RuntimeError(f"/oauth2/token: {response.status_code} {response.text[:200]}")

        return call


RAW_LABELS = {
    "client credentials": "RSA-2048 sign of the claims",
    "password": "one scrypt (N=2^14, r=8, p=1)",
    "token exchange": "RSA verify of the subject + RSA sign",
}


async def measure(running: RunningSlice, settings: Settings, say: Callable[[str], None]) -> list[Row]:
    paths = Paths(running, await register_exchange_client(running))
    meter = CpuMeter(running.pids)
    rows: list[Row] = []
    for block in BLOCKS:
        targets = paths.targets(block)
        for concurrency in settings.concurrency:
            results = await measure_block(targets, concurrency, settings, meter)
            for target, result in zip(targets, results, strict=True):
                rows.append(Row(target, concurrency, result))
                say(f"{block} c={concurrency} {target.label}: {result.count} ok, p50 {result.p50_ms:.2f} ms")
    return rows


def report(rows: Sequence[Row], settings: Settings) -> str:
    parts = [
        f"Token latency: closed loop, at most {settings.requests:,} requests or {settings.max_seconds:g} s "
        f"per row, taken in {settings.rounds} turns with the other rows of its block, after "
        f"{settings.warmup} warm-up requests.",
    ]
    for block in BLOCKS:
        block_rows = [row for row in rows if row.target.method == block]
        parts += [
            "",
            f"**{block}**",
            "",
            block_table(block_rows, settings.concurrency, SERVER_COLUMNS, CPU_COLUMNS),
        ]
    parts += failures(rows)
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.token_latency", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=600, help="requests per row (default 600)")
    parser.add_argument("--max-seconds", type=float, default=6.0, help="time cap per row (default 6)")
    parser.add_argument("--warmup", type=int, default=30, help="unrecorded requests first (default 30)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns a row's budget is split over (default 3)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="in flight (default 1 8)")
    args = parser.parse_args(argv)
    if min(args.requests, args.max_seconds, args.rounds, *args.concurrency) <= 0 or args.warmup < 0:
        parser.error("--requests, --max-seconds, --rounds and --concurrency must be positive")
    settings = Settings(args.requests, args.max_seconds, args.warmup, args.rounds, tuple(args.concurrency), 0)

    def say(line: str) -> None:
        print(f"bench.token_latency: {line}", file=sys.stderr, flush=True)

    machine = machine_line()
    started = time.monotonic()
    try:
        with running_slice(progress=say) as running:
            rows = asyncio.run(measure(running, settings, say))
    except StartupError as exc:
        print(f"bench.token_latency: {exc}", file=sys.stderr)
        return 1
    print(report(rows, settings))
    print(machine)
    say(f"done in {time.monotonic() - started:.0f} s")
    return 1 if any(row.result.errors for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
