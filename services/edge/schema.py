"""JSON Schema for protobuf messages, from their descriptors, in the proto3 JSON mapping.

The edge's OpenAPI document is built from the same message types its routes decode and encode, so
the schema cannot drift from what the edge really accepts and returns.
"""

from __future__ import annotations

from buf.validate import validate_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.edge.openapi_constraints import JsonSchema as JsonSchema  # imported from here too
from services.edge.openapi_constraints import accepts, field_rules, value_constraints, zero_value

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


# Fields the services assign and ignore on input (the protos' "Output only" fields): readOnly, so
# clients and request generators leave them out of bodies (schemathesis would otherwise take
# `tenantId` for a Tenant resource to fetch first). These names are output only in every message...
OUTPUT_ONLY_FIELDS = frozenset({"tenant_id", "owner_id", "create_time", "update_time", "archive_time"})
# ...and these only in their own (a PATCH body may still repeat a resource's `id` and `etag`, which
# the edge then checks against the path and reads as If-Match, but no client needs to send them).
ASSIGNED_FIELDS = frozenset(
    {
        "macp.conversation.v1.Agent.id",
        "macp.conversation.v1.Agent.etag",
        "macp.conversation.v1.Conversation.id",
        "macp.conversation.v1.Conversation.etag",
        "macp.conversation.v1.Conversation.status",
        "macp.conversation.v1.Conversation.archive_key",
        "macp.conversation.v1.Message.sequence",
        "macp.tool_gateway.v1.ToolServer.id",
        "macp.tool_gateway.v1.ToolServer.etag",
    }
)
# Secrets a client sends and never gets back (the protos' "Input only" fields): writeOnly.
INPUT_ONLY_FIELDS = frozenset(
    {
        "macp.tool_gateway.v1.StaticCredential.value",
        "macp.tool_gateway.v1.OAuthClientCredentials.client_secret",
        "macp.conversation.v1.RemoteClientCredentials.client_secret",
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

    def ref_requiring(
        self, descriptor: Descriptor, required: tuple[str, ...], not_cleared: tuple[str, ...] = ()
    ) -> JsonSchema:
        """The message as a request body that must carry `required` (proto field names) with
        non-zero values, the ones a service refuses to create without: each is `required`, a string
        at least one character, a list at least one item, an enum not its zero value. Or, with
        `not_cleared`, as a PATCH body: those fields may be left out (kept as they are) but not
        cleared, and the body names at least one field to change. A schema of its own, so the same
        message as a response stays as it is."""
        if not required and not not_cleared:
            return self.ref(descriptor)
        self.ref(descriptor)
        name = f"{schema_name(descriptor)}-{'create' if required else 'update'}"
        base = self.components[schema_name(descriptor)]
        properties = dict(base["properties"])
        for field_name in (*required, *not_cleared):
            field = descriptor.fields_by_name[field_name]
            properties[field.json_name] = _non_zero(field, properties[field.json_name])
        variant = {**base, "properties": properties}
        if required:
            variant["required"] = [descriptor.fields_by_name[field_name].json_name for field_name in required]
        else:
            variant["minProperties"] = 1  # an empty update mask is refused
        self.components[name] = variant
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, descriptor: Descriptor) -> JsonSchema:
        properties = {field.json_name: self._property(field) for field in descriptor.fields}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def _property(self, field: FieldDescriptor) -> JsonSchema:
        schema = self._field(field)
        if field.full_name in INPUT_ONLY_FIELDS:
            return {**schema, "writeOnly": True}
        if field.name in OUTPUT_ONLY_FIELDS or field.full_name in ASSIGNED_FIELDS:
            return {**schema, "readOnly": True}
        return schema

    def _single(self, field: FieldDescriptor) -> JsonSchema:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            return self.ref(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(_SCALARS[field.type])

    def _field(self, field: FieldDescriptor) -> JsonSchema:
        """The field's schema with its protovalidate rules (services/edge/openapi_constraints.py)."""
        rules = field_rules(field)
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return self._map(message, rules.map if rules and rules.HasField("map") else None)
        if field.is_repeated:
            items = self._single(field)
            array: JsonSchema = {"type": "array", "items": items}
            if rules is not None and rules.HasField("repeated"):
                repeated = rules.repeated
                if repeated.HasField("items"):
                    array["items"] = {**items, **value_constraints(field, repeated.items)}
                if repeated.HasField("min_items"):
                    array["minItems"] = repeated.min_items
                if repeated.HasField("max_items"):
                    array["maxItems"] = repeated.max_items
                if repeated.unique:
                    array["uniqueItems"] = True
            return array
        schema = self._single(field)
        if rules is None:
            return schema
        schema = {**schema, **value_constraints(field, rules)}
        zero = zero_value(field)
        if rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE and not accepts(schema, zero):
            # The rules hold for a value set; the zero value (unset, in proto3) is exempt.
            return {"anyOf": [schema, {"const": zero}]}
        return schema

    def _map(self, entry: Descriptor, rules: validate_pb2.MapRules | None) -> JsonSchema:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        schema: JsonSchema = {"type": "object", "additionalProperties": self._single(value)}
        if rules is None:
            return schema
        if rules.HasField("min_pairs"):
            schema["minProperties"] = rules.min_pairs
        if rules.HasField("max_pairs"):
            schema["maxProperties"] = rules.max_pairs
        if rules.HasField("keys") and key.type == FieldDescriptor.TYPE_STRING:
            schema["propertyNames"] = value_constraints(key, rules.keys)
        if rules.HasField("values"):
            schema["additionalProperties"] = {
                **schema["additionalProperties"],
                **value_constraints(value, rules.values),
            }
        return schema


def _non_zero(field: FieldDescriptor, schema: JsonSchema) -> JsonSchema:
    """`schema` of `field` narrowed to the values proto3 tells from an unset field."""
    if "anyOf" in schema:  # the rules, or the zero value: the rules alone
        schema = schema["anyOf"][0]
    if field.is_repeated:
        return {**schema, "minItems": max(1, schema.get("minItems", 0))}
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        zero = field.enum_type.values_by_number[0].name
        return {**schema, "enum": [value for value in schema["enum"] if value != zero]}
    if field.type == FieldDescriptor.TYPE_STRING:
        return {**schema, "minLength": max(1, schema.get("minLength", 0))}
    raise TypeError(f"{field.full_name}: only strings, lists and enums can be required on create")
