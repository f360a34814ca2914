"""Forged page tokens: a page token is a base64url `PageCursor` whose filter digest anyone can
compute (services/runtime/paging.py: a SHA-256 of the list's name, the caller's tenant and its
filters), so a client can send a well-formed cursor holding any position it likes. The cases put a
slot in the query (`@page_token:<list>:<cursor>@`), replaced when the request is sent, once the
attacker's tenant and conversation are known."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from macp.common.v1 import paging_pb2

from services.runtime.paging import encode_page_token, filter_digest

if TYPE_CHECKING:
    from tests.fuzz.targets import Attacker

# Positions past what a Timestamp, a datetime or a UUID column holds.
CURSORS: dict[str, Callable[[str], paging_pb2.PageCursor]] = {
    "time-2^62": lambda digest: _timed(2**62, digest),
    "time-negative-2^62": lambda digest: _timed(-(2**62), digest),
    "time-nanos-past-second": lambda digest: _timed(0, digest, nanos=1_999_999_999),
    "id-nul": lambda digest: _timed(0, digest, after_id="a\u0000b"),
    "sequence-2^63-1": lambda digest: paging_pb2.PageCursor(after_sequence=2**63 - 1, filter_digest=digest),
    "sequence-negative": lambda digest: paging_pb2.PageCursor(after_sequence=-(2**63), filter_digest=digest),
}
# The list each route's tokens belong to (what services/conversation hashes into their digests).
LISTS = {
    "GET /v1/agents": "agents",
    "GET /v1/conversations": "conversations",
    "GET /v1/conversations/{id}/messages": "messages",
    "GET /v1/conversations/{id}/archives": "archives",
}
_SLOT = re.compile(r"@page_token:(\w+):([\w^-]+)@")


def slot(route: str, cursor: str) -> str:
    return f"@page_token:{LISTS[route]}:{cursor}@"


def _timed(seconds: int, digest: str, nanos: int = 0, after_id: str = "") -> paging_pb2.PageCursor:
    cursor = paging_pb2.PageCursor(
        after_id=after_id or "00000000-0000-4000-8000-000000000000", filter_digest=digest
    )
    # Timestamp's own setters refuse what is out of its range; the wire takes any int64.
    cursor.after_time.seconds = seconds
    cursor.after_time.nanos = nanos
    return cursor


def _digest(name: str, attacker: Attacker) -> str:
    tenant = attacker.resources.tenant.tenant_id
    if name == "agents":
        return filter_digest("agents", tenant, "")
    if name == "conversations":
        return filter_digest("conversations", tenant, 0, "")
    return filter_digest(name, tenant, attacker.resources.conversation)


def forged(query: str, attacker: Attacker) -> str:
    """`query` with every page-token slot replaced by its forged token."""
    return _SLOT.sub(lambda match: encode_page_token(CURSORS[match[2]](_digest(match[1], attacker))), query)
