"""schemathesis's negative data generation against the edge's OpenAPI document, on the whole mesh
(metering, the tool gateway and the agent proxy answer the usage, admin, tool and model routes):
every request that breaks the document is refused with a documented 4xx in the documented error
shape, never a 5xx and never a success; and positive data on the operations the e2e slice cannot
serve holds too. As a tenant of its own, with an operator's token (macp:admin) for the admin route.

Budget: derandomized, a fixed number of examples per operation (about 30 operations)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from schemathesis import GenerationMode

from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from services.token import scopes
from tests.fuzz.catalog import DOCUMENT
from tests.fuzz.openapi_runs import fuzz
from tests.world import World

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NEGATIVE_TAGS = {"agents", "conversations", "messages", "archives", "tools", "usage", "admin"}
NEGATIVE_OPERATIONS = {"listModels", "retrieveModel"}
# The operations only the whole mesh serves (the e2e slice runs their positive data otherwise).
POSITIVE_TAGS = {"tools", "usage", "admin"}
EXAMPLES_PER_OPERATION = 25


def test_the_negative_run_covers_the_named_operations() -> None:
    ids = {
        spec["operationId"]
        for methods in DOCUMENT["paths"].values()
        for spec in methods.values()
        if NEGATIVE_TAGS & set(spec["tags"]) or spec["operationId"] in NEGATIVE_OPERATIONS
    }
    assert {"setTenantPlan", "callTool", "createToolServer", "getUsage", "retrieveModel"} <= ids


async def _tokens(world: World) -> tuple[str, str]:
    """A user token of a tenant of its own, and an operator's (macp:admin, for the edge and metering)."""
    mine = await world.other_tenant()
    harness = world.tokens.harness
    operator = await harness.register(scope=scopes.ADMIN)
    audience = [EDGE_AUDIENCE, service_audience("metering")]
    admin = (await harness.client_token(operator, scopes.ADMIN, audience)).access_token
    return mine.edge_token, admin


def _chooser(user: str, admin: str, tags: set[str], operation_ids: set[str]) -> Any:
    def token_for(operation: Any) -> str | None:
        spec = operation.definition.raw
        if not (tags & set(spec.get("tags", ())) or spec.get("operationId") in operation_ids):
            return None
        return admin if "admin" in spec.get("tags", ()) else user

    return token_for


async def test_negative_data_is_refused_with_a_documented_4xx(fuzz_world: World) -> None:
    user, admin = await _tokens(fuzz_world)
    token_for = _chooser(user, admin, NEGATIVE_TAGS, NEGATIVE_OPERATIONS)
    answered: Counter[str] = Counter()
    failures = await asyncio.to_thread(
        fuzz,
        DOCUMENT,
        fuzz_world.front_url,
        token_for,
        mode=GenerationMode.NEGATIVE,
        examples=EXAMPLES_PER_OPERATION,
        answered=answered,
    )
    assert failures == [], "\n\n".join(failures)
    # Every operation with something to break was sent its negative requests.
    breakable = {"POST /v1/agents", "PATCH /v1/conversations/{id}", "PUT /v1/admin/tenants/{tenant}/plan"}
    breakable |= {"POST /v1/tools/{name}/calls", "GET /v1/usage", "GET /v1/models/{id}"}
    assert {label for label, count in answered.items() if count >= 5} >= breakable, answered


async def test_positive_data_on_the_whole_mesh_holds(fuzz_world: World) -> None:
    user, admin = await _tokens(fuzz_world)
    token_for = _chooser(user, admin, POSITIVE_TAGS, NEGATIVE_OPERATIONS)
    failures = await asyncio.to_thread(
        fuzz, DOCUMENT, fuzz_world.front_url, token_for, examples=EXAMPLES_PER_OPERATION
    )
    assert failures == [], "\n\n".join(failures)
