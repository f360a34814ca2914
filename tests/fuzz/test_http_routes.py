"""Every hostile HTTP request of the catalog (REST routes of the OpenAPI document and the OAuth
routes): no 5xx, a 4xx for what no server could take, and the other tenant's next request unharmed.
A failure prints the request, its request id, the services' tracebacks and Envoy's log lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.campaign import Report
from tests.fuzz.catalog import HTTP_CASES, params
from tests.fuzz.evidence import envoy_lines
from tests.fuzz.http_attack import problems
from tests.fuzz.http_cases import HttpCase

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.mark.parametrize("case", params(HTTP_CASES))
def test_a_hostile_request_is_refused_without_harm(
    case: HttpCase, campaign: Report, fuzz_directory: Path
) -> None:
    outcome = campaign.http[case.id]
    found = problems(case, outcome)
    if found:
        evidence = [
            f"request: {case.describe()}",
            f"the whole request: python -m tests.fuzz {case.id!r}",
            f"request id: {outcome.request_id}",
            *(f"envoy: {line}" for line in envoy_lines(fuzz_directory, outcome.request_id)),
            *(f"log: {record}" for record in outcome.logs),
        ]
        pytest.fail("\n".join([*found, *evidence]))
