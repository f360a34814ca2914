"""A webhook never goes to an internal address: a literal one is refused when subscribed, and a
name is resolved before each POST, every address it has checked (loopback only where allowed)."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from macp.conversation.v1 import webhook_service_pb2 as webhook_pb

from services.orchestrator.webhooks.signing import secret_key
from services.orchestrator.webhooks.stream import Poster
from services.orchestrator.webhooks.targets import Target
from services.runtime.webhook_addresses import host_refusal, refusal


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    reason = refusal(ipaddress.ip_address(address), loopback_allowed=True)
    assert reason is not None
    assert "internal" in reason


def test_loopback_only_where_allowed_and_public_addresses_always() -> None:
    for loopback in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert refusal(ipaddress.ip_address(loopback), loopback_allowed=True) is None
        assert "loopback" in str(refusal(ipaddress.ip_address(loopback), loopback_allowed=False))
    for public in ("93.184.216.34", "2606:4700::1111"):
        assert refusal(ipaddress.ip_address(public), loopback_allowed=False) is None


async def test_a_name_is_refused_by_what_it_resolves_to() -> None:
    # `localhost` resolves (on every machine) to loopback only.
    assert await host_refusal("localhost", 443, loopback_allowed=True) is None
    reason = await host_refusal("localhost", 443, loopback_allowed=False)
    assert reason is not None
    assert reason.startswith("localhost resolves to")
    assert "does not resolve" in str(await host_refusal("no-such-host.invalid", 443, loopback_allowed=False))


async def test_the_deliverer_makes_no_request_to_an_internal_address() -> None:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        poster = Poster(http, loopback_allowed=False)
        for url in (
            "https://169.254.169.254/latest/meta-data",
            "https://[fd00::5]/hook",
            "http://127.0.0.1:9/h",
        ):
            target = Target(
                subscription=webhook_pb.WebhookSubscription(id="s", url=url),
                key=secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                conversation_ids=(),
            )
            outcome = await poster.post(target, "msg_1", b"{}")
            assert not outcome.delivered
            assert "public addresses only" in outcome.reason
        # A public address is posted to (here, to the mock transport).
        target = Target(
            subscription=webhook_pb.WebhookSubscription(id="s", url="https://93.184.216.34/hook"),
            key=secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            conversation_ids=(),
        )
        assert (await poster.post(target, "msg_2", b"{}")).delivered
    assert [str(request.url) for request in requests] == ["https://93.184.216.34/hook"]
