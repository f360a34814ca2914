"""schemathesis's stateful run over the edge's own OpenAPI document: scenarios that follow the
document's links (an agent created, then read, changed with its ETag, deleted; a conversation
created, then messages posted and listed, archived, the archive read), with schemathesis's data in
every step, as the attacker tenant.

The run is bounded and deterministic: a fixed number of short Hypothesis runs, run `n` seeded
with `n` (which also orders the operations a scenario may start with), each a few scenarios of a
bounded length. Short runs, because a long one replays and extends earlier choices while the
server's state has moved on, so the same choices draw other data and Hypothesis stops with
FlakyStrategyDefinition; a run that stops so ends early, as schemathesis's own runner does.
Failures are collected, not raised: each names its operation, check and seed, with the curl
command that reproduces it.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error
from schemathesis.generation.stateful.state_machine import APIStateMachine, release_state_machines
from schemathesis.specs.openapi.checks import ensure_resource_availability, use_after_free

# Seeds, scenarios per seed (Hypothesis's simplest one first, then drawn ones) and steps per
# scenario: about 500 requests, 15-20 s through the in-process mesh on two busy cores.
SEEDS = 12
SCENARIOS_PER_SEED = 5
STEPS_PER_SCENARIO = 8
# A server-sent event stream never ends by itself: it has no place in a scenario.
NOT_IN_SCENARIOS = "streamConversationEvents"
CHECKS = [not_a_server_error, use_after_free, ensure_resource_availability]
# The world's provider and model (tests/world.py), set in every generated new agent.
DEPLOYED_MODEL = {"provider": "local", "model": "echo-1"}


@dataclass(frozen=True)
class StatefulFailure:
    operation: str
    check: str
    status: int | None
    detail: str
    reproduce: str
    seed: int


def _failures_of(exc: BaseException) -> list[BaseException]:
    grouped = getattr(exc, "exceptions", None)
    return list(grouped) if grouped else [exc]


def _without_remotes(document: dict[str, Any]) -> dict[str, Any]:
    """The document with no agent `remote` (an outside A2A agent, for provider a2a alone, which
    `before_call` leaves out anyway). Its client credentials' `clientId` reads to schemathesis as
    a reference to a resource no operation creates, and it then never starts a scenario with
    POST /v1/agents: no agent is created, and no link from one followed."""
    trimmed = copy.deepcopy(document)
    for schema in trimmed.get("components", {}).get("schemas", {}).values():
        schema.get("properties", {}).pop("remote", None)
    return trimmed


def run_stateful_blocking(
    document: dict[str, Any], base_url: str, token: str
) -> tuple[list[StatefulFailure], Counter[str]]:
    """The bounded stateful run (blocking: the mesh serves on the caller's event loop, so this runs
    on a thread); its failures, and its answers counted by operation and status."""
    schema = (
        schemathesis.openapi.from_dict(_without_remotes(document))
        .exclude(operation_id=NOT_IN_SCENARIOS)
        .exclude(tag="webhooks")
    )
    failures: list[StatefulFailure] = []
    answers: Counter[str] = Counter()
    headers = {"authorization": f"Bearer {token}"}
    seed = [0]

    class Scenarios(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            # What the document cannot say: which providers and models a deployment serves, that
            # a new agent needs a name (a create-only rule; PATCH shares the schema), and that a
            # remote goes with provider a2a alone. Without them every generated agent is refused,
            # and no scenario gets past its first step.
            if case.operation.label == "POST /v1/agents" and isinstance(case.body, dict):
                case.body.update(DEPLOYED_MODEL)
                case.body.pop("remote", None)
                if not str(case.body.get("name", "")).strip():
                    case.body["name"] = "scenario agent"

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base_url, "headers": headers, "timeout": 15}

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            answers[f"{case.operation.label} {response.status_code}"] += 1
            try:
                case.validate_response(
                    response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
                )
            except Exception as exc:  # every failure recorded, none stops the run
                for failure in _failures_of(exc):
                    failures.append(
                        StatefulFailure(
                            operation=case.operation.label,
                            check=getattr(failure, "title", type(failure).__name__),
                            status=response.status_code,
                            detail=str(failure)[:600],
                            reproduce=case.as_curl_command(headers=headers),
                            seed=seed[0],
                        )
                    )

    one_run = settings(
        max_examples=SCENARIOS_PER_SEED,
        stateful_step_count=STEPS_PER_SCENARIO,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    try:
        for seed[0] in range(SEEDS):
            machine: type[APIStateMachine] = hypothesis.seed(seed[0])(Scenarios)
            machine.rule_order_seed = seed[0]
            try:
                machine.run(settings=one_run)
            except Flaky:
                continue  # the server's state moved under a replay: this run ends, the next begins
            except Exception as exc:  # a run that broke (a transport error): recorded, the next runs
                failures.append(
                    StatefulFailure("scenario", type(exc).__name__, None, str(exc)[:600], "", seed[0])
                )
    finally:
        release_state_machines(Scenarios)
    return failures, answers


async def run_stateful(base_url: str, token: str) -> tuple[list[StatefulFailure], Counter[str]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        document = (await client.get("/v1/openapi.json")).json()
    return await asyncio.to_thread(run_stateful_blocking, document, base_url, token)
