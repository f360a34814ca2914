"""schemathesis's stateful scenarios along the OpenAPI document's links: per operation, no 5xx, no
resource still served after its DELETE, none missing right after its creation."""

from __future__ import annotations

import pytest

from tests.fuzz.campaign import Report
from tests.fuzz.catalog import DOCUMENT
from tests.fuzz.http_cases import operations
from tests.fuzz.stateful import NOT_IN_SCENARIOS, SEEDS, STEPS_PER_SCENARIO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LABELS = [op.label for op in operations(DOCUMENT) if op.operation_id != NOT_IN_SCENARIOS]


def test_the_document_links_every_resource_to_its_operations() -> None:
    linked = {
        link["operationId"]
        for methods in DOCUMENT["paths"].values()
        for spec in methods.values()
        for answer in spec["responses"].values()
        for link in answer.get("links", {}).values()
    }
    expected = {
        "getAgent",
        "updateAgent",
        "deleteAgent",
        "getConversation",
        "updateConversation",
        "deleteConversation",
        "appendMessage",
        "listMessages",
        "archiveConversation",
        "listArchives",
        "getArchive",
    }
    assert expected <= linked, expected - linked


def test_the_scenarios_followed_the_links(campaign: Report) -> None:
    # An agent created, then read and deleted through the links of its answer: a run that never got
    # past its first step (or sent nothing) would pass every check below.
    answers = campaign.stateful_answers
    followed = {"POST /v1/agents 201", "GET /v1/agents/{id} 200", "DELETE /v1/agents/{id} 204"}
    assert followed <= set(answers), sorted(answers.items())
    assert sum(answers.values()) >= SEEDS * STEPS_PER_SCENARIO, sorted(answers.items())


@pytest.mark.parametrize("label", LABELS)
def test_an_operation_holds_in_every_scenario(label: str, campaign: Report) -> None:
    failures = [failure for failure in campaign.stateful if failure.operation == label]
    assert not failures, "\n\n".join(
        f"{failure.check} ({failure.status}): {failure.detail}\nreproduce: {failure.reproduce}"
        for failure in failures
    )
