"""Ids and etags of stored resources, the same in every service."""

from __future__ import annotations

import uuid

from services.runtime.errors import InvalidArgument


def new_etag() -> str:
    return uuid.uuid4().hex


def parse_id(value: str, field: str) -> uuid.UUID:
    """`value` as a UUID; INVALID_ARGUMENT naming `field` otherwise."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{field}: must be a UUID") from None
