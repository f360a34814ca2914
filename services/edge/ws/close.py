"""The close codes the edge sends on `/v1/ws`, and close reasons cut to what a close frame holds."""

from __future__ import annotations

from enum import IntEnum

# RFC 6455 section 5.5: a close frame's payload (code + reason) is at most 125 bytes.
MAX_REASON_BYTES = 123


class CloseCode(IntEnum):
    """The close codes the edge sends (docs/websocket.md lists them with those of the protocol,
    services/edge/ws/link.py: 1009, 1011 for a heartbeat, 1012)."""

    NORMAL = 1000
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the send queue overflowed: the client reads too slowly
    UNAUTHENTICATED = 4401  # no token, a bad one, or it expired or was revoked while connected
    IDLE_TIMEOUT = 4408  # no frame and no subscription for MACP_EDGE_WS_IDLE_TIMEOUT_SECONDS
    RATE_LIMITED = 4429  # the connect itself was over a rate limit
    # The edge is not ready (services/edge/readiness.py), or the token cannot be checked right now.
    UNAVAILABLE = 4503


def close_reason(text: str) -> str:
    """`text` as a close frame's reason: cut (with "...") to MAX_REASON_BYTES of UTF-8."""
    encoded = text.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return text
    return encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
