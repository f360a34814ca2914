"""The protovalidate rules of a field, as the JSON Schema keywords that say the same.

The services enforce their contracts' `buf.validate` rules on every request (services/runtime/
interceptors.py); the OpenAPI document says those of them JSON Schema can say, so a client (or a
request generator) knows what is refused before sending it. Each keyword here means exactly its
rule, never more: a document stricter than the services would call valid requests invalid.

What JSON Schema cannot say is left out, and the services still refuse it by name:
- CEL expressions (`cel`, a message's rules across fields, an update's "cannot be cleared");
- byte lengths (`min_bytes`, `max_bytes`): JSON Schema counts characters, not UTF-8 bytes;
- bounds of 64-bit integers, durations and timestamps: their JSON form is a string;
- a field mask's allowed paths (its JSON form is one comma-separated string);
- a pattern using RE2 syntax that ECMA-262 reads otherwise or not at all (see `ecma_pattern`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from buf.validate import validate_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor

JsonSchema = dict[str, Any]

_INTEGER_KINDS = frozenset({"int32", "sint32", "sfixed32", "uint32", "fixed32"})
_BOUNDS = {"gte": "minimum", "gt": "exclusiveMinimum", "lte": "maximum", "lt": "exclusiveMaximum"}
# No NUL (U+0000): the `macp.common.v1.storable` rule (proto/macp/common/v1/text.proto).
NUL_FREE = "^[^\\x00]*$"

# RE2 escapes and what they mean in ECMA-262, outside a character class and inside one. RE2's
# classes are ASCII-only (`\s` is `[\t\n\f\r ]`, not ECMA's Unicode white space, and without
# `\v`), so each is spelled out; one with no meaning inside a class (`\S`) makes the pattern
# unsayable there.
_CLASS_ESCAPES: dict[str, tuple[str, str | None]] = {
    "s": ("[\\t\\n\\f\\r ]", "\\t\\n\\f\\r "),
    "S": ("[^\\t\\n\\f\\r ]", None),
    "d": ("[0-9]", "0-9"),
    "D": ("[^0-9]", None),
    "w": ("[0-9A-Za-z_]", "0-9A-Za-z_"),
    "W": ("[^0-9A-Za-z_]", None),
}
# Escapes of one character that mean the same in both (punctuation, and the control characters).
_LITERAL_ESCAPES = frozenset(".*+?()[]{}|^$\\/-tnrf")


class UnsayablePattern(ValueError):
    """An RE2 pattern this module does not translate to ECMA-262 (flags, `\\A`, Unicode classes...)."""


def ecma_pattern(re2: str) -> str:
    """`re2` as an ECMA-262 regular expression that matches exactly the same strings.

    JSON Schema's `pattern` is ECMA-262; protovalidate's is RE2, and the two read some of the same
    text differently: `.` is any character but `\\n` in RE2 but also excludes `\\r`, U+2028 and
    U+2029 in ECMA-262; `\\s`, `\\S`, `\\d` and `\\w` are ASCII-only in RE2 and Unicode-aware in ECMA
    (`\\s`, `\\S`). Those are spelled out as ASCII classes; `^` and `$` mean the start and end of the
    text in both (no multi-line flag). Anything else RE2-specific raises UnsayablePattern."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(re2):
        char = re2[i]
        if char == "\\":
            if i + 1 >= len(re2):
                raise UnsayablePattern(f"{re2!r}: a trailing backslash")
            escaped = re2[i + 1]
            i += 2
            if escaped in _CLASS_ESCAPES:
                outside, inside = _CLASS_ESCAPES[escaped]
                if in_class and inside is None:
                    raise UnsayablePattern(f"{re2!r}: \\{escaped} inside a character class")
                out.append(inside if in_class else outside)  # type: ignore[arg-type]
            elif escaped in _LITERAL_ESCAPES:
                out.append("\\" + escaped)
            else:
                raise UnsayablePattern(f"{re2!r}: the RE2 escape \\{escaped}")
            continue
        if in_class:
            if re2.startswith("[:", i):
                raise UnsayablePattern(f"{re2!r}: a POSIX class")
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A `]` first in a class (after `^`) is literal in RE2 and ends the class in ECMA.
            start = i + 2 if re2.startswith("[^", i) else i + 1
            if re2.startswith("]", start):
                raise UnsayablePattern(f"{re2!r}: a literal ] first in a class")
            out.append(re2[i:start])
            i = start
            continue
        elif char == "(" and re2.startswith("(?", i) and not re2.startswith("(?:", i):
            raise UnsayablePattern(f"{re2!r}: flags or a named group")
        elif char == ".":
            out.append("[^\\n]")
            i += 1
            continue
        out.append(char)
        i += 1
    if in_class:
        raise UnsayablePattern(f"{re2!r}: an unclosed character class")
    return "".join(out)


def field_rules(field: FieldDescriptor) -> validate_pb2.FieldRules | None:
    """The field's `(buf.validate.field)` rules, None when it has none."""
    options = field.GetOptions()
    if not options.HasExtension(validate_pb2.field):
        return None
    rules: validate_pb2.FieldRules = options.Extensions[validate_pb2.field]
    return rules


def _string(rules: validate_pb2.StringRules) -> JsonSchema:
    said: JsonSchema = {}
    if rules.HasField("len"):
        said["minLength"] = said["maxLength"] = rules.len
    if rules.HasField("min_len"):
        said["minLength"] = rules.min_len
    if rules.HasField("max_len"):
        said["maxLength"] = rules.max_len
    if rules.HasField("const"):
        said["const"] = rules.const
    if rules.HasField("pattern"):
        said["pattern"] = ecma_pattern(rules.pattern)
    if rules.HasField("prefix"):
        said.setdefault("allOf", []).append({"pattern": "^" + re.escape(rules.prefix)})
    if rules.HasField("suffix"):
        said.setdefault("allOf", []).append({"pattern": re.escape(rules.suffix) + "$"})
    if rules.HasField("contains"):
        said.setdefault("allOf", []).append({"pattern": re.escape(rules.contains)})
    if rules.HasField("not_contains"):
        said["not"] = {"pattern": re.escape(rules.not_contains)}
    if rules.uuid:
        said["format"] = "uuid"
    if rules.uri:
        said["format"] = "uri"
    if rules.email:
        said["format"] = "email"
    if rules.HasExtension(_storable()) and rules.Extensions[_storable()]:
        nul_free = {"pattern": NUL_FREE}
        if "pattern" in said:
            said.setdefault("allOf", []).append(nul_free)
        else:
            said |= nul_free
    if getattr(rules, "in"):
        said["enum"] = list(getattr(rules, "in"))
    if rules.not_in:
        said["not"] = {"enum": list(rules.not_in)}
    return said


def _storable() -> Any:
    from macp.common.v1 import text_pb2  # the project's own rule, an extension of StringRules

    return text_pb2.storable


def _numeric(rules: Any) -> JsonSchema:
    """int32/uint32/double rules: bounds, `const`, `in` and `not_in`."""
    said: JsonSchema = {}
    for rule, keyword in _BOUNDS.items():
        if rules.HasField(rule):
            said[keyword] = getattr(rules, rule)
    # A lower bound above the upper one means "outside the range" in protovalidate, which these
    # keywords would turn into "nothing": refused here, so such a contract fails at import.
    low = said.get("minimum", said.get("exclusiveMinimum"))
    high = said.get("maximum", said.get("exclusiveMaximum"))
    if low is not None and high is not None and low > high:
        raise ValueError(f"an exclusive range ({low} above {high}) has no JSON Schema keywords here")
    if rules.HasField("const"):
        said["const"] = rules.const
    if getattr(rules, "in"):
        said["enum"] = list(getattr(rules, "in"))
    if rules.not_in:
        said["not"] = {"enum": list(rules.not_in)}
    return said


def _enum(rules: validate_pb2.EnumRules, enum: EnumDescriptor) -> JsonSchema:
    """An enum's names narrowed by `in`, `not_in` and `const` (its JSON form is the value's name;
    the names listed are the defined values, which `defined_only` asks for)."""
    numbers = [value.number for value in enum.values]
    if rules.HasField("const"):
        numbers = [number for number in numbers if number == rules.const]
    if getattr(rules, "in"):
        numbers = [number for number in numbers if number in getattr(rules, "in")]
    numbers = [number for number in numbers if number not in rules.not_in]
    return {"enum": [enum.values_by_number[number].name for number in numbers]}


def value_constraints(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> JsonSchema:
    """The keywords for one value of `field` (an item of a list): its scalar rules."""
    kind = rules.WhichOneof("type")
    if kind == "string":
        return _string(rules.string)
    if kind in _INTEGER_KINDS or kind in ("double", "float"):
        return _numeric(getattr(rules, kind))
    if kind == "enum" and field.enum_type is not None:
        return _enum(rules.enum, field.enum_type)
    return {}  # 64-bit integers, durations, timestamps, field masks, bytes: their JSON is a string


def zero_value(field: FieldDescriptor) -> Any:
    """The JSON form of the field's zero value, which `IGNORE_IF_ZERO_VALUE` exempts."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return ""
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        return field.enum_type.values_by_number[0].name
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    return 0


def accepts(schema: JsonSchema, value: Any) -> bool:
    """Whether `value` satisfies the keywords this module writes (to tell if a zero value needs an
    alternative of its own); a keyword it does not know makes the answer False, which only costs
    a redundant alternative."""
    checks: dict[str, Callable[[Any], bool]] = {
        "type": lambda expected: True,
        "format": lambda expected: False,
        "minLength": lambda bound: len(value) >= bound,
        "maxLength": lambda bound: len(value) <= bound,
        "pattern": lambda pattern: re.search(pattern, value) is not None,
        "enum": lambda values: value in values,
        "const": lambda constant: value == constant,
        "not": lambda negated: not accepts(negated, value),
        "allOf": lambda schemas: all(accepts(each, value) for each in schemas),
        "minimum": lambda bound: value >= bound,
        "maximum": lambda bound: value <= bound,
        "exclusiveMinimum": lambda bound: value > bound,
        "exclusiveMaximum": lambda bound: value < bound,
    }
    return all(name in checks and checks[name](expected) for name, expected in schema.items())
