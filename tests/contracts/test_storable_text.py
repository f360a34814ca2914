"""Every string a caller sends is refused at the contract when it holds NUL (U+0000), with the field
named: Postgres refuses NUL in text and jsonb, so one that got through failed later, as a 500.

Checked field by field over every RPC's request message (and the messages inside it), so a string
field added without the rule fails here."""

from __future__ import annotations

from collections.abc import Iterator

import protovalidate
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from macp.agent_proxy.v1 import agent_proxy_service_pb2
from macp.conversation.v1 import conversation_service_pb2, webhook_service_pb2
from macp.metering.v1 import metering_service_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2
from macp.token.v1 import token_service_pb2

SERVICE_FILES = (
    agent_proxy_service_pb2,
    conversation_service_pb2,
    metering_service_pb2,
    orchestrator_service_pb2,
    token_service_pb2,
    webhook_service_pb2,
)
NUL_TEXT = "a\x00b"
# Messages of the protobuf library itself: a FieldMask's paths are checked by each mask's `in` list.
WELL_KNOWN = "google.protobuf."


def _requests() -> list[Descriptor]:
    found: dict[str, Descriptor] = {}
    for module in SERVICE_FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[method.input_type.full_name] = method.input_type
    return [found[name] for name in sorted(found)]


def _string_paths(message: Descriptor, seen: tuple[str, ...] = ()) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Every path from `message` to a string field (through message fields, not back into a
    message already on the path)."""
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield (field,)
        elif field.message_type is not None:
            inner = field.message_type
            if inner.full_name.startswith(WELL_KNOWN) or inner.full_name in seen:
                continue
            if inner.GetOptions().map_entry:
                # Only map<string, string> occurs; its keys and values are both text.
                yield (field,)
                continue
            for path in _string_paths(inner, (*seen, message.full_name)):
                yield (field, *path)


def _with_nul(request: Descriptor, path: tuple[FieldDescriptor, ...]) -> Message:
    message: Message = GetMessageClass(request)()
    holder = message
    for field in path[:-1]:
        inner = getattr(holder, field.name)
        holder = inner.add() if field.is_repeated else inner
    last = path[-1]
    if last.type == FieldDescriptor.TYPE_MESSAGE:  # a map<string, string>
        getattr(holder, last.name)[NUL_TEXT] = NUL_TEXT
    elif last.is_repeated:
        getattr(holder, last.name).append(NUL_TEXT)
    else:
        setattr(holder, last.name, NUL_TEXT)
    return message


def _cases() -> list[object]:
    return [
        pytest.param(request, path, id=f"{request.name}.{'.'.join(field.name for field in path)}")
        for request in _requests()
        for path in _string_paths(request)
    ]


@pytest.mark.parametrize(("request_type", "path"), _cases())
def test_nul_in_any_request_string_is_a_violation_naming_the_field(
    request_type: Descriptor, path: tuple[FieldDescriptor, ...]
) -> None:
    names = [field.name for field in path]
    named = [
        [element.field_name for element in violation.proto.field.elements]
        for violation in protovalidate.collect_violations(_with_nul(request_type, path))
        if violation.proto.field  # not a rule of a whole message
    ]
    assert names in named, f"NUL in {'.'.join(names)} is not refused (violations: {named})"
