"""JSON Schema for protobuf messages, from their descriptors, in the proto3 JSON mapping.

The edge's OpenAPI document is built from the same message types its routes decode and encode, so
the schema cannot drift from what the edge really accepts and returns.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

JsonSchema = dict[str, Any]

_SCALARS: dict[int, JsonSchema] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # 64-bit integers are strings in the proto3 JSON mapping (JavaScript numbers lose precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WELL_KNOWN: dict[str, JsonSchema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated field paths"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.Empty": {"type": "object"},
}


# Fields the services assign and ignore on input (the protos' "Output only" fields but `id` and
# `etag`, which a PATCH body may repeat): readOnly, so clients and request generators leave them
# out of bodies (schemathesis would otherwise take `tenantId` for a Tenant resource to fetch first).
OUTPUT_ONLY_FIELDS = frozenset({"tenant_id", "owner_id", "create_time", "update_time", "archive_time"})
# Secrets a client sends and never gets back (the protos' "Input only" fields): writeOnly.
INPUT_ONLY_FIELDS = frozenset(
    {
        "macp.tool_gateway.v1.StaticCredential.value",
        "macp.tool_gateway.v1.OAuthClientCredentials.client_secret",
    }
)


def schema_name(descriptor: Descriptor) -> str:
    return descriptor.full_name


class SchemaBuilder:
    """Collects `components.schemas` entries for every message reachable from the ones asked for."""

    def __init__(self) -> None:
        self.components: dict[str, JsonSchema] = {}

    def ref(self, descriptor: Descriptor) -> JsonSchema:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = schema_name(descriptor)
        if name not in self.components:
            self.components[name] = {}  # placeholder first: recursive messages refer to themselves
            self.components[name] = self._message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, descriptor: Descriptor) -> JsonSchema:
        properties = {field.json_name: self._property(field) for field in descriptor.fields}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def _property(self, field: FieldDescriptor) -> JsonSchema:
        schema = self._field(field)
        if field.full_name in INPUT_ONLY_FIELDS:
            return {**schema, "writeOnly": True}
        return {**schema, "readOnly": True} if field.name in OUTPUT_ONLY_FIELDS else schema

    def _single(self, field: FieldDescriptor) -> JsonSchema:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            return self.ref(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(_SCALARS[field.type])

    def _field(self, field: FieldDescriptor) -> JsonSchema:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self._single(message.fields_by_name["value"])}
        if field.is_repeated:
            return {"type": "array", "items": self._single(field)}
        return self._single(field)
