"""Small conversions between Python values and protobuf well-known types, shared by every service."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime) -> Timestamp:
    """A `google.protobuf.Timestamp` for an aware datetime (Postgres `timestamptz` values are)."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp
