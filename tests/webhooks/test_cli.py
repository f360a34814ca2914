"""`macp webhooks` against the whole mesh through the edge: a subscription created (its secret
printed once), listed, shown, its failed deliveries listed, and removed."""

from __future__ import annotations

import asyncio
import io
import json
import re

import pytest

from services.cli.main import build_parser
from services.cli.webhooks import execute
from tests.world import World

pytestmark = pytest.mark.integration


async def macp(world: World, *argv: str) -> str:
    """One `macp webhooks` command as the tenant's user; what it printed (the CLI blocks: a thread)."""
    args = build_parser("webhooks").parse_args(["webhooks", *argv])
    out = io.StringIO()
    await asyncio.to_thread(execute, world.front_url, world.edge_token, args, out)
    return out.getvalue()


async def test_a_subscription_is_managed_from_the_cli(webhook_world: World) -> None:
    world = await webhook_world.other_tenant()
    conversation = await world.conversation([await world.agent("Ada")])
    created = await macp(
        world, "create", "--url", "https://hooks.example.com/macp", "--conversation", conversation.id,
        "--event", "turn_completed", "--event", "round_completed",
    )  # fmt: skip
    secret = re.search(r"signing secret \(shown this once; keep it\): (whsec_\S+)", created)
    assert secret is not None, created
    subscription_id = re.search(r"^([0-9a-f-]{36})\s", created, re.MULTILINE)
    assert subscription_id is not None, created
    found = subscription_id.group(1)

    listed = await macp(world, "list")
    assert found in listed
    assert "turn_completed,round_completed" in listed
    assert secret.group(1) not in listed
    shown = json.loads(await macp(world, "show", found, "--json"))
    assert shown["conversationId"] == conversation.id
    assert not shown.get("secret")
    assert "(no failed deliveries)" in await macp(world, "deliveries", found, "--dead")

    assert f"deleted webhook subscription {found}" in await macp(world, "delete", found)
    assert "(no webhook subscriptions)" in await macp(world, "list")
