"""Readiness: whether a process can do its work now, checked in the background, never per request.

A gRPC service is ready (health SERVING) while
- every infrastructure dependency it declares answers (Postgres, Redis, Kafka, S3);
- it holds the token service's signing keys, if it verifies tokens with them (without them it can
  only refuse every call);
- every service it needs (the registry's `needs`, `MACP_<SERVICE>_NEEDS`) answers SERVING through
  the mesh.
The edge is ready on the same terms (services/edge/readiness.py). Envoy routes only to ready
instances (services/stack/envoy_config.py), so readiness spreads outwards from the token service,
which needs no other service: token, then conversation, agent proxy and metering, then the
orchestrator, then the edge.

How a needed service is checked: a gRPC health Check through the caller's own Envoy mesh listener,
which routes it by its `macp-health-target` header to the callee's cluster. That answer covers the
whole path a real call takes: the caller's link to Envoy, Envoy's own view of the cluster (no host
it considers healthy is UNAVAILABLE at once, as a real call would get) and the callee's status.
Envoy's admin API would have told Envoy's view alone, and made every service depend on a port that
is not meant to be reachable from them. The cost is one small unary call per needed service per
check interval.

Why two failures in a row: a name that was ready counts as not ready only once it failed twice in
a row, one check interval apart, so a blip shorter than the interval (a dropped connection, a
callee's check that timed out once) does not take the process out of rotation, which would cost
far longer than the blip. A name that has never passed is not ready: nothing is assumed at start.

Why a check that timed out counts less: a needed service that answers NOT_SERVING, or that Envoy
has no healthy host for, has said it cannot serve; one that did not answer within the probe's
timeout is slow, most often because it (or the machine) is busy for a moment: a garbage
collection, a burst of work on two cores. Taking every caller out of rotation for that turned a
short stall into seconds of refused calls all over the mesh. A name that only timed out is not
ready once it did so `SILENT_STRIKES` times in a row (each round then lasts the interval plus the
timeout: about six seconds of silence), which still takes a hung service's callers out. The same
holds for infrastructure: a Postgres, Redis, Kafka or S3 ping that timed out is a silent strike,
one that was refused a strike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.aio import cancel_and_wait
from services.runtime.auth.jwks import JwksCache

log = logging.getLogger("macp.readiness")

# The header Envoy's mesh listener routes a health Check by (services/stack/envoy_config.py).
HEALTH_TARGET_HEADER = "macp-health-target"
# How often the token keys and the needed services are checked; Envoy's health checks run on the
# same scale, so a callee's change reaches its callers' readiness within about two seconds.
CHECK_SECONDS = 0.5
# A needed service that does not answer in this long counts as a failed check.
PROBE_TIMEOUT_SECONDS = 1.0
# Failures in a row before a ready name counts as not ready (see the module docstring).
STRIKES = 2
# Timed-out checks in a row before a ready name counts as not ready (see the module docstring).
SILENT_STRIKES = 4
SIGNING_KEYS = "signing-keys"

SERVING = health_pb2.HealthCheckResponse.SERVING


class Failing(frozenset[str]):
    """What a probe may return to tell the names that failed apart from those that only did not
    answer in time (`silent`, a subset): each of those counts as a silent strike, not a strike
    (see the module docstring). A plain collection of names is all failures."""

    silent: frozenset[str]

    def __new__(cls, names: Collection[str] = (), silent: Collection[str] = ()) -> Failing:
        failing = super().__new__(cls, names)
        failing.silent = frozenset(silent) & failing
        return failing


def Unanswered(names: Collection[str]) -> Failing:
    """Names that did not answer in time, and nothing else."""
    return Failing(names, silent=names)


Probe = Callable[[], Awaitable[Collection[str]]]
OnChange = Callable[[bool, tuple[str, ...]], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    """`probe` answers which of `names` are not ready right now; it is run every `every` seconds.
    A probe that raises counts as all of its names failing."""

    names: tuple[str, ...]
    probe: Probe
    every: float = CHECK_SECONDS


class Readiness:
    """The verdict of a set of checks, kept current by a background task per check.

    `on_change(ready, not_ready)` is awaited whenever the verdict changes (and once after the first
    round of checks), so the health service or a log can follow it."""

    def __init__(self, checks: Sequence[Check], on_change: OnChange | None = None) -> None:
        self._checks = tuple(checks)
        self._on_change = on_change
        self._passed: set[str] = set()
        self._strikes: dict[str, int] = {name: 0 for check in checks for name in check.names}
        self._silences: dict[str, int] = dict.fromkeys(self._strikes, 0)
        self._verdict: tuple[str, ...] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def not_ready(self) -> tuple[str, ...]:
        """What is not ready, sorted by name (empty when ready), as last published: a read costs
        nothing, so a request may look at it."""
        if self._verdict is None:  # no round of checks has run yet
            return tuple(sorted(self._strikes))
        return self._verdict

    @property
    def ready(self) -> bool:
        return self._verdict == ()

    def _current(self) -> tuple[str, ...]:
        return tuple(
            sorted(
                name
                for name, strikes in self._strikes.items()
                if name not in self._passed or strikes >= STRIKES or self._silences[name] >= SILENT_STRIKES
            )
        )

    async def check_now(self) -> None:
        """Run every check once, at once, and publish the verdict."""
        await asyncio.gather(*(self._run(check) for check in self._checks))
        await self._publish()

    async def start(self) -> None:
        """The first round of checks (the verdict is known when this returns), then the checks in
        the background until `stop`."""
        await self.check_now()
        self._tasks = [asyncio.create_task(self._repeat(check)) for check in self._checks]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await cancel_and_wait(task)

    async def _repeat(self, check: Check) -> None:
        while True:
            await asyncio.sleep(check.every)
            await self._run(check)
            await self._publish()

    async def _run(self, check: Check) -> None:
        try:
            failing = await check.probe()
        except Exception as exc:
            log.debug("readiness probe failed", extra={"names": check.names, "error": str(exc)})
            failing = set(check.names)
        silent = failing.silent if isinstance(failing, Failing) else frozenset()
        for name in check.names:
            if name not in failing:
                self._strikes[name] = self._silences[name] = 0
                self._passed.add(name)
            elif name in silent:
                self._silences[name] += 1
            else:
                self._strikes[name] += 1

    async def _publish(self) -> None:
        verdict = self._current()
        if verdict == self._verdict:
            return
        first = self._verdict is None
        self._verdict = verdict
        if not first or verdict:
            log.warning("readiness changed", extra={"ready": not verdict, "not_ready": list(verdict)})
        if self._on_change is not None:
            await self._on_change(not verdict, verdict)


def keys_check(jwks: JwksCache) -> Check:
    """Ready once the token service's signing keys were fetched. While they are not, each check
    fetches them too, so readiness follows the token service within one interval rather than the
    key cache's own backed-off retries. Once fetched, a failed refresh keeps them (jwks.py), so a
    token service restart does not make this name fail."""

    async def probe() -> Collection[str]:
        if not jwks.loaded:
            with contextlib.suppress(Exception):  # why it failed is the key cache's to log
                await jwks.refresh()
        return () if jwks.loaded else (SIGNING_KEYS,)

    return Check((SIGNING_KEYS,), probe)


def mesh_check(channel: grpc.aio.Channel, service: str, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> Check:
    """Ready while `service` answers SERVING to a health Check through the mesh at `channel`."""
    check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # set in __init__
    request = health_pb2.HealthCheckRequest(service="")
    metadata = ((HEALTH_TARGET_HEADER, service),)

    async def probe() -> Collection[str]:
        try:
            # Not waiting for the channel: an Envoy that does not answer is a failed check, now.
            response = await check(request, metadata=metadata, timeout=timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Unanswered((service,))
            return (service,)
        return () if response.status == SERVING else (service,)

    return Check((service,), probe)
