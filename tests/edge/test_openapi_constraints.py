"""The OpenAPI document says every protovalidate rule of its messages that JSON Schema can say,
checked against the contracts' own annotations field by field (not a list of numbers copied by
hand); its patterns mean in ECMA-262 (run by node) what protovalidate's RE2 means; and a PATCH
body says which fields it may not clear, where the create body requires them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import protovalidate
import pytest
from buf.validate import validate_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from services.edge.app import API_TITLE, API_VERSION, api_routes
from services.edge.openapi_constraints import (
    NUL_FREE,
    UnsayablePattern,
    ecma_pattern,
    field_rules,
    zero_value,
)
from services.edge.routes import openapi_document

DOCUMENT = openapi_document(api_routes(), title=API_TITLE, version=API_VERSION)
SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]
POOL = descriptor_pool.Default()


def _messages() -> Iterator[Descriptor]:
    for name in SCHEMAS:
        try:
            yield POOL.FindMessageTypeByName(name)
        except KeyError:
            continue  # a variant (`-create`), or a shape an RFC fixes


RULED = [
    pytest.param(message, field, id=field.full_name)
    for message in _messages()
    for field in message.fields
    if field_rules(field) is not None
]


def _constrained(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of a set value: the rules' alternative of a field whose zero value is exempt."""
    return schema["anyOf"][0] if "anyOf" in schema else schema


def _patterns(schema: dict[str, Any]) -> list[str]:
    return [schema.get("pattern", ""), *(each.get("pattern", "") for each in schema.get("allOf", []))]


def _check_scalar(rules: validate_pb2.FieldRules, schema: dict[str, Any], field: FieldDescriptor) -> None:
    kind = rules.WhichOneof("type")
    if kind == "string":
        string = rules.string
        if string.HasField("max_len"):
            assert schema["maxLength"] == string.max_len
        if string.HasField("min_len"):
            assert schema["minLength"] == string.min_len
        if string.HasField("pattern"):
            assert ecma_pattern(string.pattern) in _patterns(schema)
        if string.uuid:
            assert schema["format"] == "uuid"
        if string.ListFields() and any(f.name == "storable" for f, _ in string.ListFields()):
            assert NUL_FREE in _patterns(schema)
        if getattr(string, "in"):
            assert schema["enum"] == list(getattr(string, "in"))
    elif kind in ("int32", "uint32", "double"):
        numeric = getattr(rules, kind)
        for rule, keyword in (("gte", "minimum"), ("lte", "maximum"), ("gt", "exclusiveMinimum")):
            if numeric.HasField(rule):
                assert schema[keyword] == getattr(numeric, rule), rule
    elif kind == "enum":
        assert field.enum_type is not None
        names = {value.number: value.name for value in field.enum_type.values}
        assert not {names[number] for number in rules.enum.not_in} & set(schema["enum"])
        if rules.enum.defined_only:
            assert set(schema["enum"]) <= set(names.values())


@pytest.mark.parametrize(("message", "field"), RULED)
def test_every_rule_json_schema_can_say_is_in_the_document(
    message: Descriptor, field: FieldDescriptor
) -> None:
    rules = field_rules(field)
    assert rules is not None
    schema = SCHEMAS[message.full_name]["properties"][field.json_name]
    kind = rules.WhichOneof("type")
    if kind == "repeated":
        repeated = rules.repeated
        if repeated.HasField("min_items"):
            assert schema["minItems"] == repeated.min_items
        if repeated.HasField("max_items"):
            assert schema["maxItems"] == repeated.max_items
        assert schema.get("uniqueItems", False) == repeated.unique
        if repeated.HasField("items"):
            _check_scalar(repeated.items, schema["items"], field)
    elif kind == "map":
        if rules.map.HasField("max_pairs"):
            assert schema["maxProperties"] == rules.map.max_pairs
        if rules.map.keys.string.HasField("max_len"):
            assert schema["propertyNames"]["maxLength"] == rules.map.keys.string.max_len
        if getattr(rules.map.keys.string, "in"):
            assert schema["propertyNames"]["enum"] == list(getattr(rules.map.keys.string, "in"))
        if rules.map.values.string.HasField("max_len"):
            assert schema["additionalProperties"]["maxLength"] == rules.map.values.string.max_len
    else:
        _check_scalar(rules, _constrained(schema), field)
    if rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE and "anyOf" in schema:
        # The zero value is exempt from the rules: the document takes it.
        assert {"const": zero_value(field)} in schema["anyOf"]


def test_every_component_is_a_valid_json_schema() -> None:
    for _name, schema in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)


# Strings that RE2 and ECMA-262 read differently in places: Unicode white space (ECMA's \s and \S),
# line terminators (ECMA's `.`), a trailing newline (Python's `$`), and ordinary text.
PROBES = [
    "a",
    "ab",
    "a b",
    " a",
    "a ",
    "\u00a0a",
    "a\u00a0",
    "a\n",
    "a\r",
    "a\rb",
    "a\u2028b",
    "\u2028",
    "a\u000bb",
    "\u000b",
    "\ufeffa",
    "A-b_c.d:e",
    "a__b",
    "a__*",
    "x__y.z",
    "1a",
    "-a",
    "https://x",
    "http:/x",
    "2026-12",
    "2026-13",
    "a@b|c+d",
    "a/b",
    "é",
]


def _patterned() -> list[tuple[Descriptor, FieldDescriptor, str]]:
    found = []
    for message in _messages():
        for field in message.fields:
            rules = field_rules(field)
            if rules is None:
                continue
            string = rules.repeated.items.string if rules.WhichOneof("type") == "repeated" else rules.string
            if string.HasField("pattern"):
                found.append((message, field, string.pattern))
    return found


def _re2_accepts(message: Descriptor, field: FieldDescriptor, probe: str) -> bool:
    instance = GetMessageClass(message)()
    if field.is_repeated:
        getattr(instance, field.name).append(probe)
    else:
        setattr(instance, field.name, probe)
    violations = protovalidate.collect_violations(instance)
    return not any(
        v.proto.rule_id == "string.pattern"
        and v.proto.field is not None
        and v.proto.field.elements[0].field_name == field.name
        for v in violations
    )


def test_every_pattern_means_in_ecma_262_what_it_means_in_re2() -> None:
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    patterned = _patterned()
    assert len(patterned) >= 5, patterned
    cases = [(ecma_pattern(re2), probe) for _, _, re2 in patterned for probe in PROBES]
    script = (
        "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(cases.map(([p, s]) => new RegExp(p, 'u').test(s))));"
    )
    ran = subprocess.run(
        [node, "-e", script], input=json.dumps(cases), capture_output=True, text=True, check=True
    )
    ecma = iter(json.loads(ran.stdout))
    differ = [
        (field.full_name, re2, probe)
        for message, field, re2 in patterned
        for probe in PROBES
        if next(ecma) != _re2_accepts(message, field, probe)
    ]
    assert differ == []


@pytest.mark.parametrize(
    ("re2", "ecma"),
    [
        ("^\\S(.*\\S)?$", "^[^\\t\\n\\f\\r ]([^\\n]*[^\\t\\n\\f\\r ])?$"),
        ("^[a-z][a-z0-9_-]*$", "^[a-z][a-z0-9_-]*$"),
        ("^[\\s\\d]+$", "^[\\t\\n\\f\\r 0-9]+$"),
    ],
)
def test_a_pattern_is_translated_class_by_class(re2: str, ecma: str) -> None:
    assert ecma_pattern(re2) == ecma


@pytest.mark.parametrize("re2", ["(?i)abc", "\\Aabc\\z", "\\pL+", "[[:alpha:]]", "[\\S]", "[]a]"])
def test_a_pattern_ecma_262_would_read_otherwise_is_refused(re2: str) -> None:
    with pytest.raises(UnsayablePattern):
        ecma_pattern(re2)


@pytest.mark.parametrize(
    ("path", "fields"),
    [("/v1/agents/{id}", ["name", "provider", "model"]), ("/v1/conversations/{id}", ["participantAgentIds"])],
)
def test_a_patch_body_may_leave_out_but_not_clear_what_create_requires(path: str, fields: list[str]) -> None:
    reference = DOCUMENT["paths"][path]["patch"]["requestBody"]["content"]["application/json"]["schema"][
        "$ref"
    ]
    patch = SCHEMAS[reference.rsplit("/", 1)[-1]]
    assert "required" not in patch
    assert patch["minProperties"] == 1
    validator = Draft202012Validator(patch)
    for name in fields:
        assert "anyOf" not in patch["properties"][name], name
        cleared = [] if patch["properties"][name].get("type") == "array" else ""
        assert not validator.is_valid({name: cleared}), name
