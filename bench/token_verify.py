"""Token verifications per second on one core, beside the raw baselines measured in the same run.

    .venv/bin/python -m bench.token_verify [--seconds 0.3] [--rounds 7] [--cpu N]

Rows, all on the same RS256 (RSA-2048) token of about 0.9 KB with a warm JWKS cache:
- the bare `cryptography` RSA verify of that token's signature: the floor no verifier goes under;
- PyJWT's `decode` with the same key, issuer and audience, if PyJWT is installed;
- `jwt.verify`: every check (header, signature, claims, lifetime, delegation), nothing cached;
- `TokenVerifier.verify` with a new token each call: `jwt.verify` plus one Redis EXISTS (the
  revocation check of a jti this process has not seen);
- `TokenVerifier.verify` and `JwtAuthenticator.authenticate` with the same token again, the common
  case (every call of a session, every hop of a turn): the verified-token memory and the revocation
  cache answer, and Redis is asked about that jti once a second.

Figures are this process's CPU time per verification, pinned to one core: on a shared machine that
is what "per core" means and what other load disturbs least. Rows are measured round-robin and each
keeps its best round, so a burst of load elsewhere does not land on one row only. Redis (the
server at MACP_REDIS_URL, else the embedded one `macp up` uses) runs as its own process, on
another core when there is one, and its CPU is not counted; wall time is printed beside.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cryptography
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.runtime.auth.authenticator import JwtAuthenticator
from services.runtime.auth.jwks import JwksCache
from services.runtime.auth.jwt import b64url_encode, jwk_from_public_key, sign, verify
from services.runtime.auth.revocation import RevocationChecker
from services.runtime.auth.settings import DEFAULT_ISSUER, service_audience
from services.runtime.auth.verifier import TokenVerifier
from services.runtime.context import RpcContext
from services.stack.config import free_port
from services.stack.redis import Redis

AUDIENCE = service_audience("conversation")
KID = "bench-key-1"
DISTINCT_TOKENS = 1500


@dataclass(frozen=True)
class Row:
    name: str
    cpu_seconds: float
    wall_seconds: float


def token_claims(now: float) -> dict[str, Any]:
    """A user's token as the orchestrator presents it on an agent's behalf: one level of `act`."""
    return {
        "iss": DEFAULT_ISSUER,
        "sub": "user-8d2f1c",
        "aud": [AUDIENCE, service_audience("orchestrator")],
        "exp": int(now) + 3600,
        "iat": int(now),
        "nbf": int(now),
        "jti": str(uuid.uuid4()),
        "client_id": "macp-web",
        "client_class": "consumer",
        "scope": "conversation:read conversation:write agents:read usage:read",
        "tenant_id": "tenant-acme",
        "tier": "pro",
        "user_id": "user-8d2f1c",
        "act": {"sub": "orchestrator", "client_id": "orchestrator"},
    }


@dataclass(frozen=True)
class Runner:
    """One row: runs `count` iterations and returns the (CPU, wall) seconds they took."""

    name: str
    run: Callable[[int], tuple[float, float]]
    count: int


def round_robin(runners: list[Runner], rounds: int) -> list[Row]:
    """Each round runs every row once, so a burst of load elsewhere on the machine falls on all rows
    alike rather than on whichever was running; each row keeps its best round."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for runner in runners:
            cpu, wall = runner.run(runner.count)
            previous = best.get(runner.name, (float("inf"), float("inf")))
            best[runner.name] = (min(previous[0], cpu / runner.count), min(previous[1], wall / runner.count))
    return [Row(runner.name, *best[runner.name]) for runner in runners]


def calibrate(run: Callable[[int], tuple[float, float]], seconds: float) -> int:
    """How many iterations take about `seconds` of CPU."""
    count = 100
    while True:
        cpu, _ = run(count)
        if cpu >= seconds / 4:
            return max(count, int(count * seconds / cpu))
        count *= 4


def timed_sync(step: Callable[[], object]) -> Callable[[int], tuple[float, float]]:
    def run(count: int) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            step()
        return time.process_time() - cpu, time.perf_counter() - wall

    return run


def timed_async(
    loop: asyncio.AbstractEventLoop, step: Callable[[], Awaitable[object]]
) -> Callable[[int], tuple[float, float]]:
    async def steps(count: int) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            await step()
        return time.process_time() - cpu, time.perf_counter() - wall

    return lambda count: loop.run_until_complete(steps(count))


class Metadata:
    """The part of a grpc.aio ServicerContext the authenticator reads."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@contextmanager
def redis_url() -> Iterator[str]:
    configured = os.environ.get("MACP_REDIS_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="macp-bench-") as scratch:
        server = Redis(Path(scratch), port=free_port())
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def pin(cpu: int | None) -> int:
    """Run on one core from here on (the last one we may use, unless told); returns it."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def pyjwt_run(token: str, public_key: rsa.RSAPublicKey) -> Callable[[int], tuple[float, float]] | None:
    try:
        import jwt as pyjwt  # a dev dependency: the reference row only
    except ImportError:
        return None

    def step() -> object:
        return pyjwt.decode(
            token, public_key, algorithms=["RS256"], audience=AUDIENCE, issuer=DEFAULT_ISSUER, leeway=30
        )

    return timed_sync(step)


def measure(args: argparse.Namespace, url: str) -> list[Row]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_key = private_key.public_key()
    token = sign(token_claims(time.time()), private_key=private_key, kid=KID)
    signing_input, _, signature_segment = token.rpartition(".")
    signature = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    assert b64url_encode(signature) == signature_segment
    distinct = [
        sign(token_claims(time.time()), private_key=private_key, kid=KID) for _ in range(DISTINCT_TOKENS)
    ]

    loop = asyncio.new_event_loop()
    redis: aioredis.Redis = aioredis.from_url(url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    jwks = JwksCache(_serving({"keys": [jwk_from_public_key(public_key, KID)]}))
    loop.run_until_complete(jwks.refresh())

    def new_verifier() -> TokenVerifier:
        return TokenVerifier(
            audience=AUDIENCE, issuer=DEFAULT_ISSUER, jwks=jwks, revocations=RevocationChecker(redis, prefix)
        )

    keys = {KID: public_key}
    encoded_input = signing_input.encode("ascii")
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    strict = timed_sync(lambda: verify(token, keys=keys, issuer=DEFAULT_ISSUER, audience=AUDIENCE))
    count = calibrate(strict, args.seconds)
    runners = [
        Runner(
            "`cryptography` RSA verify alone (raw floor)",
            timed_sync(lambda: public_key.verify(signature, encoded_input, pkcs1, sha256)),
            count,
        )
    ]
    pyjwt = pyjwt_run(token, public_key)
    if pyjwt is not None:
        runners.append(Runner("PyJWT `decode` (RS256, iss, aud, exp)", pyjwt, count))
    runners.append(Runner("`jwt.verify`: every check, nothing cached", strict, count))

    def fresh_tokens(count: int) -> tuple[float, float]:
        verifier = new_verifier()  # nothing remembered: every token is new to this process
        tokens = iter(distinct[:count])
        return timed_async(loop, lambda: verifier.verify(next(tokens)))(count)

    runners.append(
        Runner("`TokenVerifier`, a new token each call (+ 1 Redis EXISTS)", fresh_tokens, len(distinct))
    )

    warm = new_verifier()
    loop.run_until_complete(warm.verify(token))
    runners.append(
        Runner("`TokenVerifier`, the same token again", timed_async(loop, lambda: warm.verify(token)), count)
    )
    authenticator = JwtAuthenticator(AUDIENCE, jwks, RevocationChecker(redis, prefix), DEFAULT_ISSUER, {})
    context = cast(RpcContext, Metadata(token))
    method = "/macp.conversation.v1.ConversationService/GetConversation"
    loop.run_until_complete(authenticator.authenticate(method, context))
    runners.append(
        Runner(
            "`JwtAuthenticator.authenticate`, the same token again (+ Principal)",
            timed_async(loop, lambda: authenticator.authenticate(method, context)),
            count,
        )
    )
    rows = round_robin(runners, args.rounds)
    loop.run_until_complete(redis.aclose())
    loop.close()
    return rows


def _serving(document: dict[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def fetch() -> dict[str, Any]:
        return document

    return fetch


def table(rows: list[Row]) -> str:
    floor = rows[0].cpu_seconds
    lines = [
        "| path | CPU µs / verification | verifications/s per core | cost / raw RSA | wall µs |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.cpu_seconds * 1e6:.1f} | {1 / row.cpu_seconds:,.0f} | "
            f"{row.cpu_seconds / floor:.2f} | {row.wall_seconds * 1e6:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=0.3, help="CPU seconds per row and round (default 0.3)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds; each row keeps its best (default 7)")
    parser.add_argument("--cpu", type=int, default=None, help="the core to pin to (default: the last one)")
    args = parser.parse_args()
    with redis_url() as url:  # started before pinning, so Redis is not confined to our core
        core = pin(args.cpu)
        rows = measure(args, url)
    print(
        f"Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{platform.machine()}, pinned to core {core}, load average {os.getloadavg()[0]:.2f}\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
