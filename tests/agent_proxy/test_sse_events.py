"""The providers' event streams as the adapters read them: payloads in order, multi-line data
joined, OpenAI's [DONE] ending the stream, anything not a JSON object refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from services.agent_proxy.sse_events import payloads


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _all(*lines: str) -> list[dict[str, object]]:
    return [payload async for payload in payloads(_lines(*lines))]


async def test_each_event_is_its_data_decoded_in_order() -> None:
    got = await _all(
        "event: message_start", 'data: {"type": "message_start"}', "",
        ": a comment", "event: ping", 'data: {"type": "ping"}', "",
        'data: {"type":', 'data: "delta"}', "",
        'data:{"type": "last"}',
    )  # fmt: skip
    assert got == [{"type": "message_start"}, {"type": "ping"}, {"type": "delta"}, {"type": "last"}]


async def test_done_ends_the_stream() -> None:
    assert await _all('data: {"n": 1}', "", "data: [DONE]", "", 'data: {"n": 2}', "") == [{"n": 1}]


async def test_a_payload_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        await _all("data: {not json", "")
    with pytest.raises(ValueError, match="not a JSON object"):
        await _all("data: [1, 2]", "")
