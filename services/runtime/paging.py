"""Page tokens of every List RPC (macp/common/v1/paging.proto): opaque to clients, keyset inside.

A token is the unpadded base64url encoding of a serialized `PageCursor`: the position after the
last item returned in the list's stable order ((create_time, id), or sequence for messages).
Keyset paging, unlike OFFSET, neither repeats nor skips an item that existed when paging began,
however many rows are inserted or deleted meanwhile. The cursor also carries a digest of the
request's filters, so a token cannot be replayed with other filters to read another list's tail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import paging_pb2

from services.runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50

PageCursor = paging_pb2.PageCursor


def filter_digest(*filters: object) -> str:
    """A short digest of a request's filter values (in a fixed order per RPC)."""
    text = "\x1f".join(str(value) for value in filters)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def page_size(requested: int) -> int:
    """The number of items to return: the request's (validated to 1..1000 by the proto) or the default."""
    return requested or DEFAULT_PAGE_SIZE


def encode_page_token(cursor: PageCursor) -> str:
    return base64.urlsafe_b64encode(cursor.SerializeToString()).rstrip(b"=").decode()


def decode_page_token(token: str, digest: str, field: str = "page_token") -> PageCursor | None:
    """The cursor of `token` (None for the first page); INVALID_ARGUMENT naming `field` for a token
    that does not decode or was issued for other filters."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = PageCursor.FromString(raw)
    except (binascii.Error, ValueError, DecodeError):
        raise InvalidArgument(f"{field}: not a page token this server issued") from None
    if cursor.filter_digest != digest:
        raise InvalidArgument(f"{field}: the token belongs to a request with other filters")
    return cursor


@dataclass(frozen=True)
class TimeKey:
    """A keyset position in (create_time, id) order."""

    time: datetime
    id: uuid.UUID


def time_key(cursor: PageCursor | None, field: str = "page_token") -> TimeKey | None:
    """The (create_time, id) position a cursor stands for; INVALID_ARGUMENT if it holds none."""
    if cursor is None:
        return None
    try:
        return TimeKey(cursor.after_time.ToDatetime(tzinfo=UTC), uuid.UUID(cursor.after_id))
    except ValueError:
        raise InvalidArgument(f"{field}: not a page token this server issued") from None


def time_token(create_time: Timestamp, item_id: str, digest: str) -> str:
    """The token of the page after the item at (create_time, item_id)."""
    cursor = PageCursor(after_id=item_id, filter_digest=digest)
    cursor.after_time.CopyFrom(create_time)
    return encode_page_token(cursor)


class Paged(Protocol):
    """An item of a list in (create_time, id) order."""

    @property
    def id(self) -> str: ...

    @property
    def create_time(self) -> Timestamp: ...


P = TypeVar("P", bound=Paged)


def time_page(found: Sequence[P], size: int, digest: str) -> tuple[Sequence[P], str]:
    """The page of `found` (read with a limit of `size + 1`, to know whether more follow) and the
    token of the next page, "" after the last."""
    if len(found) <= size:
        return found, ""
    last = found[size - 1]
    return found[:size], time_token(last.create_time, last.id, digest)


def sequence_token(after_sequence: int, digest: str) -> str:
    """The token of the page after the item with sequence number `after_sequence`."""
    return encode_page_token(PageCursor(after_sequence=after_sequence, filter_digest=digest))
