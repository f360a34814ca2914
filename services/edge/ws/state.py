"""The states of an accepted WebSocket connection (services/edge/ws/connection.py), one at a time,
as Starlette's `WebSocketState` is one enum rather than flags that must agree:

               first subscription opened
      IDLE  ─────────────────────────────────►  FOLLOWING
        │   ◄─────────────────────────────────      │
        │        its last subscription ended         │
        │ we close                         we close  │
        ▼                                            │
     CLOSING  ◄──────────────────────────────────────┘
        │ the link is gone
        ▼
      CLOSED  ◄── also straight from IDLE or FOLLOWING, when the client closes or goes away

- IDLE: accepted, following no conversation; its one timer is the idle timeout (4408) or the
  token's expiry (4401), whichever is first. No task and no gRPC stream.
- FOLLOWING: at least one Converse stream; its timer is the token's expiry alone: heartbeats,
  not frames, say the client is alive.
- CLOSING: our close frame is on its way (the code is kept for the log); no frame is handled or
  sent any more, and the streams are already stopped.
- CLOSED: the link is gone (the client closed, went away, or answered our close); everything the
  connection held is released. Nothing leaves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class ConnectionState(Enum):
    IDLE = "idle"
    FOLLOWING = "following"
    CLOSING = "closing"
    CLOSED = "closed"

    @property
    def open(self) -> bool:
        """Frames are still handled and sent (IDLE or FOLLOWING)."""
        return self in _OPEN


_S = ConnectionState
_OPEN = frozenset({_S.IDLE, _S.FOLLOWING})

# The arrows of the diagram above: where each state may go next.
TRANSITIONS: Mapping[ConnectionState, frozenset[ConnectionState]] = {
    _S.IDLE: frozenset({_S.FOLLOWING, _S.CLOSING, _S.CLOSED}),
    _S.FOLLOWING: frozenset({_S.IDLE, _S.CLOSING, _S.CLOSED}),
    _S.CLOSING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A move the diagram above does not have: a bug of the edge's, never the client's doing."""


def transition(current: ConnectionState, to: ConnectionState) -> ConnectionState:
    """`to`, if the diagram allows moving there from `current`."""
    if to not in TRANSITIONS[current]:
        raise InvalidTransition(f"websocket connection: {current.name} -> {to.name}")
    return to
