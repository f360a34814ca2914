"""Hostile query and path parameters for every operation of the edge's OpenAPI document: integers
past every width and digits that are not ASCII in integer parameters, NUL, bytes no UTF-8 text holds
and huge values in the others, timestamps, durations, months and event ids past their ranges,
forged page tokens, repeated and unknown parameters, and path ids that are not ids."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

from tests.fuzz import page_tokens
from tests.fuzz.hostile_json import HOSTILE_DURATIONS, HOSTILE_TIMESTAMPS
from tests.fuzz.http_cases import AGENT, HttpCase, Operation, slot_of, valid_body

# Hostile values of query parameters, percent-encoded as sent.
INTEGER_QUERY_VALUES: dict[str, str] = {
    "2^31-1": str(2**31 - 1),
    "2^31": str(2**31),
    "2^32": str(2**32),
    "2^63": str(2**63),
    "2^64": str(2**64),
    "-2^63-1": str(-(2**63) - 1),
    "10^30": "1" + "0" * 30,
    "-1": "-1",
    "0": "0",
    "1.5": "1.5",
    "1e3": "1e3",
    "superscript-two": urllib.parse.quote("\u00b2"),
    "fullwidth-one": urllib.parse.quote("\uff11"),
    "arabic-indic-five": urllib.parse.quote("\u0665"),
    "nul": "1%00",
    "invalid-utf8": "%FF",
    "space-padded": "%201",
}
STRING_QUERY_VALUES: dict[str, str] = {
    "nul": "a%00b",
    "invalid-utf8": "a%FF%FEb",
    "overlong-utf8": "a%C0%AFb",
    "utf8-encoded-surrogate": "%ED%A0%80",
    "8k": "x" * 8_000,
}
PATH_VALUES: dict[str, str] = {
    "nul": "%00",
    "uuid-with-nul": "00000000-0000-4000-8000-00000000000%00",
    "invalid-utf8": "%FF%FE",
    "overlong-utf8": "%C0%AF",
    "utf8-encoded-surrogate": "%ED%A0%80",
    "dot-dot": "..%2F..%2Fv1%2Fagents",
    "8k": "x" * 8_000,
    "uppercase-uuid": AGENT.upper(),
}


def _special_query_values(schema: dict[str, Any]) -> dict[str, str]:
    """Values past the ranges a parameter's type implies: timestamps, durations, months, event ids."""
    pattern = str(schema.get("pattern", ""))
    if schema.get("format") == "date-time":
        return {name: urllib.parse.quote(value) for name, value in HOSTILE_TIMESTAMPS.items()}
    if pattern.endswith("s$"):
        return {name: urllib.parse.quote(value) for name, value in HOSTILE_DURATIONS.items()}
    if "{4}-" in pattern:  # a month, YYYY-MM
        return {"month-13": "2026-13", "year-0": "0000-01", "year-9999-month-99": "9999-99"}
    if "A-Za-z0-9._:-" in pattern:  # an event id, <ms>-<seq>
        return {"ms-2^64": f"{2**64}-0", "seq-2^64": f"0-{2**64}", "negative": "-1-0"}
    return {}


def parameter_attacks(op: Operation) -> Iterator[HttpCase]:
    body, content_type = valid_body(op)

    def case(attack: str, path: str, query: str = "") -> HttpCase:
        return HttpCase(
            op.label,
            attack,
            op.method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            credential=op.credential,
        )

    for parameter in op.spec.get("parameters", []):
        name = parameter["name"]
        if parameter["in"] == "query":
            values = (
                INTEGER_QUERY_VALUES
                if parameter["schema"].get("type") == "integer"
                else {**STRING_QUERY_VALUES, **_special_query_values(parameter["schema"])}
            )
            for attack, value in values.items():
                yield case(f"?{name}={attack}", op.filled_path, f"{name}={value}")
            if name == "page_token" and op.label in page_tokens.LISTS:
                for cursor in page_tokens.CURSORS:
                    forged = page_tokens.slot(op.label, cursor)
                    yield case(f"?{name}=forged-{cursor}", op.filled_path, f"{name}={forged}")
            yield case(f"?{name}=repeated", op.filled_path, f"{name}=1&{name}=2")
        elif parameter["in"] == "path":
            for attack, value in PATH_VALUES.items():
                yield case(f"{{{name}}}={attack}", op.filled_path.replace(slot_of(op, name), value))
    yield case("?unknown-parameter-with-nul", op.filled_path, "%00=1")
