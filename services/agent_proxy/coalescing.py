"""Text that arrives faster than the caller reads it is merged, never reordered or dropped.

The upstream reader `put`s each piece as it comes; the gRPC writer `take`s everything that
accumulated since its last write as one piece. A caller that keeps up gets one message per token;
a slow one gets fewer, larger messages, and the provider is never held back by it. Other events (a
tool call) pass through whole and in their place: text is merged only up to the next of them.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

Event = TypeVar("Event")


class DeltaBuffer(Generic[Event]):
    def __init__(self) -> None:
        self._parts: list[str | Event] = []
        self._events = 0  # how many of the parts are not text
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, part: str | Event) -> None:
        self._parts.append(part)
        if not isinstance(part, str):
            self._events += 1
        self._ready.set()

    def close(self) -> None:
        """No more parts are coming; `take` returns None once what is buffered has been taken."""
        self._closed = True
        self._ready.set()

    async def take(self) -> str | Event | None:
        """All text buffered so far up to the next event, in arrival order, or that event (waiting
        for some part); None at the end."""
        while not self._parts:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        parts = self._parts
        if not self._events:  # text only, the usual case: everything at once
            self._parts = []
            return parts[0] if len(parts) == 1 else "".join(parts)  # type: ignore[arg-type]
        first = parts[0]
        if not isinstance(first, str):
            del parts[0]
            self._events -= 1
            return first
        end = 1
        while end < len(parts) and isinstance(parts[end], str):
            end += 1
        text = "".join(parts[:end])  # type: ignore[arg-type]
        del parts[:end]
        return text
