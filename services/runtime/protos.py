"""Small conversions between Python values and protobuf well-known types, shared by every service."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp


def now_timestamp() -> Timestamp:
    """A `google.protobuf.Timestamp` of now."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def timestamp_at(seconds: float) -> Timestamp:
    """A `google.protobuf.Timestamp` of a Unix time in seconds (time.time(), a clock's reading)."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def timestamp(value: datetime) -> Timestamp:
    """A `google.protobuf.Timestamp` for an aware datetime (Postgres `timestamptz` values are)."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def descriptor_of(message: type[Message]) -> Descriptor:
    """A message class's descriptor, typed as the Python one."""
    # The C (upb) and Python descriptor classes are distinct to the type checker, alike at run time.
    return cast(Descriptor, message.DESCRIPTOR)
