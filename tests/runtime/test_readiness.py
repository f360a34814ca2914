"""What SERVING means (services/runtime/readiness.py): the verdict's rules on probes the test
controls, then real services: one NOT_SERVING while a service it needs is unreachable, and one
NOT_SERVING until it holds the token service's signing keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb

from services.conversation.service import DEFINITION as CONVERSATION
from services.edge.settings import EdgeSettings
from services.runtime.readiness import SILENT_STRIKES, STRIKES, Check, Failing, Readiness, Unanswered
from services.runtime.registry import EDGE, SERVICES, service
from services.runtime.settings import Env, ServerSettings, SettingsError
from services.stack.config import free_port
from tests.runtime.serving import PROBE_ENVIRON, channel, health_status, probe_definition, running
from tests.runtime.test_server_lifecycle import Relay
from tests.tokens import TokenWorld

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Switch:
    """A probe whose answer the test sets: `up` or not, or raising."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = False
        self.raises = False

    async def probe(self) -> Collection[str]:
        if self.raises:
            raise RuntimeError("the probe itself failed")
        return () if self.up else (self.name,)


async def test_nothing_is_ready_until_it_passed_once_and_a_single_failure_is_a_blip() -> None:
    changes: list[tuple[bool, tuple[str, ...]]] = []

    async def follow(ready: bool, not_ready: tuple[str, ...]) -> None:
        changes.append((ready, not_ready))

    keys, callee = Switch("signing-keys"), Switch("orchestrator")
    readiness = Readiness([Check((keys.name,), keys.probe), Check((callee.name,), callee.probe)], follow)
    assert set(readiness.not_ready) == {"orchestrator", "signing-keys"}, "before any check has run"
    assert not readiness.ready

    keys.up = True
    await readiness.check_now()
    assert readiness.not_ready == ("orchestrator",)
    callee.up = True
    await readiness.check_now()
    assert readiness.ready

    callee.up = False  # one failed check: shorter than an interval, nothing changes
    await readiness.check_now()
    assert readiness.ready
    callee.up = True
    await readiness.check_now()
    callee.up = False
    await readiness.check_now()
    assert readiness.ready, "the strikes start again after a success"
    await readiness.check_now()
    assert readiness.not_ready == ("orchestrator",)

    callee.up = True  # one success is enough to be ready again
    await readiness.check_now()
    assert readiness.ready
    keys.raises = True  # a probe that raises fails what it checks
    await readiness.check_now()
    await readiness.check_now()
    assert readiness.not_ready == ("signing-keys",)
    assert changes == [
        (False, ("orchestrator",)),
        (True, ()),
        (False, ("orchestrator",)),
        (True, ()),
        (False, ("signing-keys",)),
    ]


async def test_a_callee_that_only_timed_out_takes_longer_to_count_as_not_ready() -> None:
    """A needed service that did not answer in time is busy more often than down: it counts as not
    ready only after more rounds than one that said it cannot serve."""
    silent = False

    async def probe() -> Collection[str]:
        return Unanswered(("metering",)) if silent else ()

    readiness = Readiness([Check(("metering",), probe)])
    await readiness.check_now()
    assert readiness.ready
    silent = True
    assert SILENT_STRIKES > STRIKES
    for _ in range(SILENT_STRIKES - 1):
        await readiness.check_now()
    assert readiness.ready, "a stall shorter than the silent strikes keeps the process in rotation"
    await readiness.check_now()
    assert readiness.not_ready == ("metering",), "a callee silent for long enough is not ready"
    silent = False
    await readiness.check_now()
    assert readiness.ready


async def test_one_probe_tells_what_failed_from_what_only_timed_out() -> None:
    """Infrastructure is pinged together: Redis refusing its connection is down after two
    checks, while S3 that only timed out stays ready until its silent strikes run out."""

    passing: set[str] = set()

    async def recovering() -> Collection[str]:
        return Failing({"redis", "s3"} - passing, silent={"s3"} - passing)

    readiness = Readiness([Check(("postgres", "redis", "s3"), recovering)])
    passing.update({"redis", "s3"})
    await readiness.check_now()
    assert readiness.ready
    passing.clear()
    for _ in range(STRIKES):
        await readiness.check_now()
    assert readiness.not_ready == ("redis",)


async def test_the_background_checks_follow_a_probe_and_stop() -> None:
    callee = Switch("conversation")
    became_ready = asyncio.Event()

    async def follow(ready: bool, not_ready: tuple[str, ...]) -> None:
        if ready:
            became_ready.set()

    readiness = Readiness([Check((callee.name,), callee.probe, every=0.05)], follow)
    await readiness.start()
    try:
        assert not readiness.ready
        callee.up = True
        async with asyncio.timeout(2):
            await became_ready.wait()
        assert readiness.ready
    finally:
        await readiness.stop()


async def _no_providers() -> proxy_pb.ListProvidersResponse:
    return proxy_pb.ListProvidersResponse()


class Callee:
    """A service the probe service needs, stopped and started again on one port. The probe's mesh
    address points straight at it, so the health Check its readiness sends reaches it directly."""

    def __init__(self) -> None:
        self.port = free_port()
        self._stack: AsyncExitStack | None = None

    async def start(self) -> None:
        self._stack = AsyncExitStack()
        environ = {**PROBE_ENVIRON, "MACP_PROBE_PORT": str(self.port)}
        await self._stack.enter_async_context(running(probe_definition(_no_providers), environ))

    async def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()


@pytest.fixture
async def callee() -> AsyncIterator[Callee]:
    served = Callee()
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


async def wait_for(opened: grpc.aio.Channel, status: int, within: float) -> float:
    """Seconds until the health of `opened` is `status`."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while (seen := await health_status(opened)) != status:
        assert loop.time() - began < within, f"health stayed {seen} for {within} s"
        await asyncio.sleep(0.05)
    return loop.time() - began


async def test_a_service_is_not_serving_while_a_service_it_needs_is_unreachable(callee: Callee) -> None:
    environ = {
        **PROBE_ENVIRON,
        "MACP_PROBE_PORT": "0",
        "MACP_PROBE_NEEDS": "token",  # the callee stands in for it
        "MACP_MESH_ADDRESS": f"127.0.0.1:{callee.port}",
    }
    async with running(probe_definition(_no_providers), environ) as caller, channel(caller.port) as opened:
        assert await health_status(opened) == SERVING

        await callee.stop()
        # Two failed checks half a second apart.
        assert await wait_for(opened, NOT_SERVING, within=5) >= 0.4
        await callee.start()
        await wait_for(opened, SERVING, within=5)

        # Down for less than one check interval: still SERVING throughout.
        await callee.stop()
        await callee.start()
        for _ in range(10):
            assert await health_status(opened) == SERVING
            await asyncio.sleep(0.1)


@pytest.mark.integration
async def test_a_service_is_not_serving_until_it_holds_the_token_services_keys(
    conversation_environ: dict[str, str], tokens: TokenWorld
) -> None:
    token_address = urlsplit(f"//{tokens.address}")
    assert token_address.hostname is not None
    assert token_address.port is not None
    relay = Relay(token_address.hostname, token_address.port)  # closed: the token service is away
    environ = {**tokens.service_environ(conversation_environ), "MACP_MESH_ADDRESS": f"127.0.0.1:{relay.port}"}
    async with running(CONVERSATION, environ) as service, channel(service.port) as opened:
        await asyncio.sleep(1.0)  # two check intervals: it stays NOT_SERVING
        assert await health_status(opened) == NOT_SERVING
        await relay.open()
        try:
            await wait_for(opened, SERVING, within=5)
        finally:
            await relay.close()


def test_what_each_part_needs_has_no_cycle_and_starts_from_the_token_service() -> None:
    needs = {spec.name: spec.needs for spec in SERVICES}
    assert needs["token"] == ()
    ready: set[str] = set()
    while len(ready) < len(needs):  # each round, the parts whose needs are all ready become ready
        newly = {name for name, wanted in needs.items() if name not in ready and set(wanted) <= ready}
        assert newly, f"a cycle among {sorted(set(needs) - ready)}"
        ready |= newly
    assert set(EDGE.needs) <= ready


def test_needs_are_read_from_the_environment_and_checked() -> None:
    orchestrator = service("orchestrator")
    assert ServerSettings.from_env(Env({}), orchestrator).needs == orchestrator.needs
    partial = Env({"MACP_ORCHESTRATOR_NEEDS": "conversation, token"})
    assert ServerSettings.from_env(partial, orchestrator).needs == ("conversation", "token")
    assert ServerSettings.from_env(Env({"MACP_ORCHESTRATOR_NEEDS": "none"}), orchestrator).needs == ()
    redis = {"MACP_REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert EdgeSettings.from_env(Env(redis)).needs == EDGE.needs
    assert EdgeSettings.from_env(Env({**redis, "MACP_EDGE_NEEDS": "token"})).needs == ("token",)
    with pytest.raises(SettingsError, match=r"MACP_EDGE_NEEDS='tokens' is malformed \(tokens is not one of"):
        EdgeSettings.from_env(Env({**redis, "MACP_EDGE_NEEDS": "tokens"}))
