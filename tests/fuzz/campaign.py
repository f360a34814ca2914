"""One fuzz campaign against a running world: the attacker's hostile requests (HTTP cases, then
WebSocket frames, then schemathesis's stateful run) while the bystander tenant's ordinary traffic
runs beside them the whole time. The tests read its report; nothing is asserted while it runs, so
one broken case never hides the others."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.fuzz.bystander import Bystander
from tests.fuzz.evidence import capturing_errors
from tests.fuzz.http_attack import HttpOutcome, send
from tests.fuzz.http_cases import HttpCase
from tests.fuzz.stateful import StatefulFailure, run_stateful
from tests.fuzz.targets import Attacker, Resources, attacker_of, resources_of
from tests.fuzz.ws_attack import WsOutcome, attack_websocket
from tests.fuzz.ws_cases import WsCase
from tests.world import World


@dataclass
class Report:
    attacker: Attacker
    bystander: Resources
    http: dict[str, HttpOutcome] = field(default_factory=dict)
    websocket: dict[str, WsOutcome] = field(default_factory=dict)
    stateful: list[StatefulFailure] = field(default_factory=list)
    stateful_answers: Counter[str] = field(default_factory=Counter)
    bystander_log: Bystander | None = None
    seconds: dict[str, float] = field(default_factory=dict)


async def run_campaign(world: World, http_cases: list[HttpCase], ws_cases: list[WsCase]) -> Report:
    started = time.monotonic()
    attacker = await attacker_of(world)
    tenant = await world.tokens.tenant()
    bystander = await resources_of(world, tenant, "bystander")
    report = Report(attacker, bystander)
    report.seconds["setup"] = time.monotonic() - started
    traffic = Bystander(world, bystander, attacker)
    report.bystander_log = traffic
    with capturing_errors() as records:
        running = asyncio.create_task(traffic.run())
        try:
            async with (
                httpx.AsyncClient(base_url=world.front_url, timeout=15) as mine,
                bystander.client(world.front_url) as theirs,
            ):
                started = time.monotonic()
                for index, case in enumerate(http_cases):
                    report.http[case.id] = await send(case, index, attacker, bystander, mine, theirs, records)
                report.seconds["http"] = time.monotonic() - started
                started = time.monotonic()
                report.websocket = await attack_websocket(
                    world, attacker, bystander, ws_cases, theirs, records
                )
                report.seconds["websocket"] = time.monotonic() - started
            started = time.monotonic()
            report.stateful, report.stateful_answers = await run_stateful(
                world.front_url, attacker.resources.token
            )
            report.seconds["stateful"] = time.monotonic() - started
        finally:
            traffic.stop()
            await running
    return report
