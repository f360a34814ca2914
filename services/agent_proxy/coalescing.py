"""Text that arrives faster than the caller reads it is merged, never reordered or dropped.

The upstream reader `put`s each piece as it comes; the gRPC writer `take`s everything that
accumulated since its last write as one piece. A caller that keeps up gets one message per token;
a slow one gets fewer, larger messages, and the provider is never held back by it.
"""

from __future__ import annotations

import asyncio


class DeltaBuffer:
    def __init__(self) -> None:
        self._parts: list[str] = []
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, text: str) -> None:
        self._parts.append(text)
        self._ready.set()

    def close(self) -> None:
        """No more text is coming; `take` returns None once what is buffered has been taken."""
        self._closed = True
        self._ready.set()

    async def take(self) -> str | None:
        """All text buffered so far, in arrival order (waiting for some); None at the end."""
        while not self._parts:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        text = "".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        return text
