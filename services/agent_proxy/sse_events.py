"""The JSON payloads of a provider's server-sent event stream, read without the SDK's event models.

The SDKs make the call (headers, auth, their errors for a refused request); their stream parsers
build a validated model per event, which cost more CPU than everything else the agent proxy does
for a token, so the adapters read the raw streaming response's lines here instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import orjson

# OpenAI's end of stream, sent as a `data:` line of its own.
DONE: Final = "[DONE]"


async def payloads(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """Each event's `data:` lines joined and decoded (`event:`, `id:` and comments are not needed:
    every payload says what it is); a payload that is not JSON raises ValueError."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                payload = "\n".join(data)
                data = []
                if payload == DONE:
                    return
                yield _object(orjson.loads(payload))
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    if data and (payload := "\n".join(data)) != DONE:
        yield _object(orjson.loads(payload))


def _object(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ValueError("a stream event that is not a JSON object")
    return payload
