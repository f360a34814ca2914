"""schemathesis's generated requests against the edge's own OpenAPI document, one bounded,
deterministic Hypothesis run per operation, in either generation mode:

- positive: requests the document calls valid; none may answer 5xx, an undocumented status, or a
  body its schema does not describe;
- negative: requests that break the document (a value past a bound, a wrong type, a missing
  required member, a member no schema has); each must be refused with a documented 4xx in the
  documented error shape, never a 5xx and never a success (`negative_data_rejection`).

Blocking (schemathesis's clients are synchronous): the callers run it on a thread while their
mesh serves on the event loop. Failures are collected, one line each, not raised.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import negative_data_rejection

POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]
# The mesh under test serves on the test's own event loop, beside its readiness probes: while a run
# keeps it busy, a probe can time out and the edge answer 503 NOT_READY for a moment. Such an answer
# comes before the request is looked at, says nothing of it, and the request is sent again.
NOT_READY_RETRIES = 40
NOT_READY_PAUSE_SECONDS = 0.25


def fuzz(
    document: dict[str, Any],
    base_url: str,
    token_for: Callable[[Any], str | None],
    *,
    mode: GenerationMode = GenerationMode.POSITIVE,
    examples: int = 12,
    answered: Counter[str] | None = None,
) -> list[str]:
    """Run `examples` requests of `mode` on every operation `token_for` gives a token (the bearer
    token that operation is called with; None leaves it out of the run), and return the failures;
    `answered` counts the answers by operation, so a run that sent nothing cannot pass unseen."""
    answered = Counter() if answered is None else answered
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = list(schema.get_all_operations())
    # An operation schemathesis cannot read is a failure of the document itself.
    failures += [f"unreadable operation: {result.err()}" for result in operations if isinstance(result, Err)]
    for operation in (result.ok() for result in operations if isinstance(result, Ok)):
        token = token_for(operation)
        if token is None:
            continue
        headers = {"authorization": f"Bearer {token}"}
        failures += _run_operation(operation, base_url, headers, mode, examples, answered)
    return failures


def _call_when_ready(case: Any, base_url: str, headers: dict[str, str]) -> Any:
    """`case`'s answer from a ready edge (see NOT_READY_RETRIES)."""
    for _ in range(NOT_READY_RETRIES):
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        if response.status_code != 503 or '"NOT_READY"' not in response.text:
            return response
        time.sleep(NOT_READY_PAUSE_SECONDS)
    return response


def _run_operation(
    operation: Any,
    base_url: str,
    headers: dict[str, str],
    mode: GenerationMode,
    examples: int,
    answered: Counter[str],
) -> list[str]:
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else POSITIVE_CHECKS
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = _call_when_ready(case, base_url, headers)
        answered[case.operation.label] += 1
        try:
            case.validate_response(response, checks=checks)
        except (Exception, BaseExceptionGroup) as exc:  # every failure collected, one run reports all
            answer = f"{response.status_code} {response.text[:200]}"
            sent = case.as_curl_command(headers=headers)
            failures.append(f"{case.operation.label}: {answer}: {exc}\n{sent}")

    try:
        run()
    except Unsatisfiable:
        # Nothing of the operation can break its document (no parameter, no body): no
        # negative request exists, as schemathesis's own runner skips it.
        if (
            mode is not GenerationMode.NEGATIVE
            or operation.body
            or operation.query
            or operation.path_parameters
        ):
            raise
    return failures
