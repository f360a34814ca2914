"""Hostile JSON, written byte for byte: what `json.dumps` will not write (numbers past any float,
duplicate keys, lone surrogates, nesting deeper than any parser's stack) and what it writes only by
accident (NUL characters, NaN).

Every value here is plain data built the same way on every run, so a failing case is reproduced
from its name alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

JsonPath = tuple[str | int, ...]

# The attack: 100,000 levels, about 200 KB of brackets, well under the 1 MiB body limit.
DEEP = 100_000


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is: `1e400`, `NaN`, a 2^64 literal, a key repeated."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object written with its members in this order, keys repeated if they are."""

    members: tuple[tuple[str, Any], ...]


def encode(value: Any) -> str:
    """`value` as JSON text: dicts, lists, strings (escaped as `json.dumps` escapes them, so a lone
    surrogate becomes `\\ud800`), numbers, booleans, None, `Raw` and `Pairs`."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(key)}:{encode(item)}" for key, item in value.members) + "}"
    if isinstance(value, dict):
        return encode(Pairs(tuple(value.items())))
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(item) for item in value) + "]"
    # Strings, numbers, booleans and None; ensure_ascii escapes NUL and lone surrogates.
    return json.dumps(value, allow_nan=True)


def deep_array(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def deep_object(depth: int) -> Raw:
    return Raw('{"a":' * depth + "0" + "}" * depth)


def with_value(document: dict[str, Any], path: JsonPath, value: Any) -> dict[str, Any]:
    """A copy of `document` with `value` at `path`, creating the objects and lists on the way."""
    copy: dict[str, Any] = json.loads(json.dumps(document))
    node: Any = copy
    for step, following in zip(path, (*path[1:], None), strict=True):
        if following is None:
            _set(node, step, value)
            break
        child = _get(node, step)
        if not isinstance(child, dict | list):
            child = [] if isinstance(following, int) else {}
            _set(node, step, child)
        node = child
    return copy


def _get(node: Any, step: str | int) -> Any:
    if isinstance(node, list):
        return node[step] if isinstance(step, int) and step < len(node) else None
    return node.get(step)


def _set(node: Any, step: str | int, value: Any) -> None:
    if isinstance(node, list):
        assert isinstance(step, int)
        while len(node) <= step:
            node.append(None)
        node[step] = value
    else:
        node[step] = value


def duplicated(document: dict[str, Any]) -> Pairs:
    """`document` with its first member written twice, the second time with a different value
    (RFC 8259 leaves duplicate names to the parser: last wins, first wins, or an error)."""
    members = tuple(document.items())
    if not members:
        return Pairs((("a", 1), ("a", 2)))
    key, value = members[0]
    other = "other" if isinstance(value, str) else None
    return Pairs(((key, other), *members))


@dataclass(frozen=True)
class Leaf:
    """A scalar place in a body: its path, and the schema there (type, enum, format)."""

    path: JsonPath
    schema: dict[str, Any]

    @property
    def name(self) -> str:
        return ".".join(str(step) for step in self.path)

    @property
    def kind(self) -> str:
        if "enum" in self.schema or "const" in self.schema:
            return "string"
        kind = self.schema.get("type", "string")
        return kind[0] if isinstance(kind, list) else str(kind)


def leaves(schema: dict[str, Any], components: dict[str, Any], path: JsonPath = ()) -> Iterator[Leaf]:
    """Every scalar place in bodies of `schema` (an OpenAPI schema, `$ref`s into `components`):
    object members, the first item of arrays and maps, the first variant of a `oneOf`, and every
    variant's members of an object `oneOf` (the OAuth forms). Recursive messages stop at depth 6."""
    schema = _resolved(schema, components)
    if len(path) > 6:
        return
    variants = schema.get("oneOf") or schema.get("anyOf")
    if variants:
        if all(_resolved(v, components).get("type") == "object" for v in variants):
            seen: set[JsonPath] = set()
            for variant in variants:
                for leaf in leaves(variant, components, path):
                    if leaf.path not in seen:
                        seen.add(leaf.path)
                        yield leaf
        else:
            yield from leaves(variants[0], components, path)
        return
    kind = schema.get("type")
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties", {})
        for name, member in properties.items():
            yield from leaves(member, components, (*path, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            yield from leaves(extra, components, (*path, "key"))
    elif kind == "array":
        yield from leaves(schema.get("items", {}), components, (*path, 0))
    else:
        yield Leaf(path, schema)


def _resolved(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


# Values no string field may store: NUL (Postgres refuses 0x00), a lone surrogate (not Unicode
# scalar, so not UTF-8: protobuf and Postgres both refuse it), and both at once with normal text.
HOSTILE_STRINGS: dict[str, Any] = {
    "nul": "a\u0000b",
    "lone-surrogate": "\ud800",
    "reversed-surrogates": "\udc00\ud800",
}
# Integers past every protobuf width, negatives, floats where whole numbers go, and numbers JSON
# can write but no float holds.
HOSTILE_INTEGERS: dict[str, Any] = {
    "2^31": 2**31,
    "2^63": 2**63,
    "2^64": 2**64,
    "-2^63-1": -(2**63) - 1,
    "-1": -1,
    "10^400": Raw("1" + "0" * 400),
    "1.5": 1.5,
    "1e400": Raw("1e400"),
    "string-digits": "12",
    "true": True,
}
HOSTILE_NUMBERS: dict[str, Any] = {
    "1e400": Raw("1e400"),
    "-1e400": Raw("-1e400"),
    "NaN": Raw("NaN"),
    "Infinity": Raw("Infinity"),
    "10^400": Raw("1" + "0" * 400),
    "2^63": 2**63,
    "-1": -1,
    "5e-324": Raw("5e-324"),
    "string": "0.5",
}
HOSTILE_BOOLEANS: dict[str, Any] = {"string": "true", "number": 1, "null": None}


# Timestamps and durations past what protobuf's Timestamp (years 1 to 9999) and Duration
# (+-315,576,000,000 s) hold, and dates no calendar has.
HOSTILE_TIMESTAMPS: dict[str, str] = {
    "year-10000": "10000-01-01T00:00:00Z",
    "year-0": "0000-01-01T00:00:00Z",
    "february-30": "2026-02-30T00:00:00Z",
    "offset-25h": "2026-01-01T00:00:00+25:00",
    "leap-second": "2026-12-31T23:59:60Z",
    "nanoseconds-10": "2026-01-01T00:00:00.0000000001Z",
}
HOSTILE_DURATIONS: dict[str, str] = {
    "past-max": "315576000001s",
    "2^63": f"{2**63}s",
    "negative-past-max": "-315576000001s",
    "nanoseconds-10": "0.0000000001s",
    "1e400": "1e400s",
}


def hostile_values(leaf: Leaf) -> dict[str, Any]:
    """The hostile values for `leaf`, by name."""
    if leaf.kind == "integer":
        return HOSTILE_INTEGERS
    if leaf.kind == "number":
        return HOSTILE_NUMBERS
    if leaf.kind == "boolean":
        return HOSTILE_BOOLEANS
    if leaf.schema.get("format") == "date-time":
        return {**HOSTILE_STRINGS, **HOSTILE_TIMESTAMPS}
    if str(leaf.schema.get("pattern", "")).endswith("s$"):
        return {**HOSTILE_STRINGS, **HOSTILE_DURATIONS}
    return HOSTILE_STRINGS
