"""How a test makes the local provider misbehave: errors, slowness, cut and malformed streams.

A behavior is written as `key=value` pairs separated by commas, for example
`status=529`, `slow=0.5`, `cut=3`, `malformed=2`, `tokens=500,pace=0.002`:

| key | effect |
| --- | --- |
| `status` | answer this HTTP error (429 rate limit, 500 server error, 529 Anthropic "overloaded", ...) |
| `slow` | wait this many seconds before the first byte of the response |
| `cut` | close the connection after this many text deltas, without ending the stream |
| `malformed` | send a chunk that is not JSON after this many text deltas |
| `tokens` | answer exactly this many tokens (still capped by the request's max_tokens) |
| `pace` | wait this many seconds between text deltas |

A request carries one in its `x-macp-behavior` header, or a test books behaviors per model through
`POST /admin/behaviors` (for the next N requests of that model, or until cleared), which is how a
test reaches requests another process (the agent proxy) sends.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, fields, replace
from typing import Any

BEHAVIOR_HEADER = "x-macp-behavior"
ERROR_STATUSES = frozenset({400, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504, 529})


class BehaviorError(ValueError):
    """A behavior spec that cannot be read; the message names the key and what it accepts."""


@dataclass(frozen=True)
class Behavior:
    status: int | None = None
    slow: float = 0.0
    cut: int | None = None
    malformed: int | None = None
    tokens: int | None = None
    pace: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Behavior:
        behavior = cls()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            known = {field.name for field in fields(cls)}
            if not sep or key not in known:
                raise BehaviorError(f"behavior {item!r}: expected key=value with key one of {sorted(known)}")
            behavior = replace(behavior, **{key: _value(key, raw.strip())})
        return behavior

    async def injected_status(self) -> int | None:
        """Wait out `slow`, then the HTTP error to answer instead of the call (`status`), if any:
        what every endpoint does before its first byte."""
        if self.slow:
            await asyncio.sleep(self.slow)
        return self.status


def _value(key: str, raw: str) -> Any:
    try:
        if key in ("slow", "pace"):
            seconds = float(raw)
            if not 0 <= seconds <= 300:
                raise ValueError
            return seconds
        number = int(raw)
    except ValueError:
        raise BehaviorError(f"behavior {key}={raw!r}: expected a non-negative number") from None
    if key == "status" and number not in ERROR_STATUSES:
        raise BehaviorError(f"behavior status={number}: expected one of {sorted(ERROR_STATUSES)}")
    if number < 0:
        raise BehaviorError(f"behavior {key}={number}: expected a non-negative number")
    return number


@dataclass
class _Booking:
    behavior: Behavior
    remaining: int | None  # None: until cleared


class BehaviorBook:
    """Behaviors booked per model; each request of that model takes the first one still booked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bookings: dict[str, list[_Booking]] = {}

    def book(self, model: str, behavior: Behavior, times: int | None) -> None:
        with self._lock:
            self._bookings.setdefault(model, []).append(_Booking(behavior, times))

    def clear(self, model: str | None = None) -> None:
        with self._lock:
            if model is None:
                self._bookings.clear()
            else:
                self._bookings.pop(model, None)

    def take(self, model: str) -> Behavior:
        with self._lock:
            queue = self._bookings.get(model)
            if not queue:
                return Behavior()
            booking = queue[0]
            if booking.remaining is not None:
                booking.remaining -= 1
                if booking.remaining <= 0:
                    queue.pop(0)
            return booking.behavior
