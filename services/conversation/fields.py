"""Small rules every resource of the service shares: field masks (ids and etags: services/runtime/ids.py)."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from services.runtime.errors import InvalidArgument
from services.runtime.protos import descriptor_of

M = TypeVar("M", bound=Message)


def merged(current: M, changes: M, mask: FieldMask) -> M:
    """`current` with the fields `mask` names taken from `changes` (AIP-134): a named message or
    list is replaced whole, a named field absent from `changes` is cleared."""
    if not mask.IsValidForDescriptor(descriptor_of(type(current))):
        paths = ", ".join(mask.paths)
        raise InvalidArgument(f"update_mask: {paths} names a field {current.DESCRIPTOR.name} does not have")
    result = type(current)()
    result.CopyFrom(current)
    mask.MergeMessage(changes, result, replace_message_field=True, replace_repeated_field=True)
    return result
