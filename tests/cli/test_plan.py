"""`macp plan set` against a real `macp up`: the seeded `local` tenant's plan changed through the
edge's admin route, the change in its audit log; and the allowances an enterprise plan is given."""

from __future__ import annotations

import json

import pytest

from services.cli.accounts import CliError
from services.cli.plan import plan_body
from tests.cli.test_accounts import Stack, macp, ok, stack

__all__ = ["stack"]  # the module's own `macp up`

pytestmark = pytest.mark.integration


def test_enterprise_allowances_are_parsed_and_bad_ones_named() -> None:
    body = plan_body("enterprise", ["agent_turns=50000@40/1000", "tool_calls=100"])
    assert body == {
        "plan": "enterprise",
        "allowances": [
            {
                "meter": "METER_AGENT_TURNS",
                "includedQuantity": "50000",
                "overagePriceCents": "40",
                "overageBlockSize": "1000",
            },
            {
                "meter": "METER_TOOL_CALLS",
                "includedQuantity": "100",
                "hardLimit": True,
                "overageBlockSize": 1,
            },
        ],
    }
    for plan, allowances, named in (
        ("enterprise", [], "enterprise plan names its allowances"),
        ("pro", ["agent_turns=1"], "not pro"),
        ("enterprise", ["turns=1"], "meter 'turns'"),
        ("enterprise", ["agent_turns=many"], "expected METER=N"),
        ("enterprise", ["agent_turns=1@5/0"], "at least 1"),
    ):
        with pytest.raises(CliError, match=named):
            plan_body(plan, allowances)


def test_plan_set_changes_the_seeded_tenant_and_is_audited(stack: Stack) -> None:
    assert ok(macp(stack, "plan", "set", "--tenant", "local", "--plan", "free")).splitlines()[0] == (
        "tenant local: plan free"
    )
    audit = json.loads(ok(macp(stack, "audit", "--action", "plan.set", "--json")))
    [event] = audit["events"]
    assert (event["resource"], event["detail"]["tier"]) == ("plan/local", "TIER_FREE")

    answer = json.loads(ok(macp(stack, "plan", "set", "--tenant", "local", "--plan", "pro", "--json")))
    assert answer["plan"]["tier"] == "TIER_PRO"

    refused = macp(stack, "plan", "set", "--tenant", "local", "--plan", "pro", "--token", "not-a-token")
    assert refused.returncode == 1
    assert refused.stderr.startswith("macp plan set: HTTP 401")
