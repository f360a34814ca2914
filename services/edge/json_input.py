"""The one JSON decoder of the edge: REST bodies, OAuth registration bodies and WebSocket frames.

Every JSON document a client sends is decoded here, by orjson, and refused when it nests deeper
than `MAX_DEPTH` arrays and objects. Python's `json` recurses once per level and raises
RecursionError (a 500) on a body of a few hundred kilobytes of `[`; orjson stops by itself at
1,024 levels, without recursion. The edge's own limit is far lower because what it decodes is then
walked by recursive Python code (protobuf's json_format, repr, logging): a few hundred levels
crash those in turn, and no document of the API nests more than a handful. The depth is checked
without recursion: a document with no more brackets than the limit (most of them) costs two
`count`s on top of orjson; a larger one a walk of its containers, level by level, which costs
about what orjson's decoding did (measured: 1.3 ms for a 645 KB body of 5,000 objects).

orjson also refuses what `json` let through: NaN and Infinity, invalid UTF-8 and lone surrogates
(`"\\ud800"`), none of which a protobuf string or Postgres text can hold.
"""

from __future__ import annotations

from typing import Any

import orjson

# Arrays and objects, counting the outermost: `{"a": [1]}` is 2 deep.
MAX_DEPTH = 64
_ORJSON_DEPTH_ERROR = "depth limit exceeded"


class InvalidJson(ValueError):
    """A document the edge refuses to decode; `message` says why, naming what was sent (the body,
    the frame) as the caller named it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether `document` nests more than `limit` arrays and objects: walked level by level, each
    level's containers gathered by a comprehension (a quarter of the cost of a stack of pairs)."""
    level: list[Any] = [document]
    for _ in range(limit):
        below: list[Any] = []
        for value in level:
            children = value.values() if type(value) is dict else value
            below += [child for child in children if type(child) is dict or type(child) is list]
        if not below:
            return False
        level = below
    return True


def _could_nest_deeper(data: bytes | str, limit: int) -> bool:
    """Whether `data` holds more opening brackets than `limit`: only then can it nest deeper."""
    if isinstance(data, str):
        return data.count("[") + data.count("{") > limit
    return data.count(b"[") + data.count(b"{") > limit


def decode_json_object(data: bytes | str, *, what: str, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object `data` holds, or InvalidJson saying what is wrong with `what` ("the body")."""
    too_deep = InvalidJson(f"{what} nests arrays and objects deeper than {max_depth} levels")
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith(_ORJSON_DEPTH_ERROR):
            raise too_deep from None
        raise InvalidJson(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidJson(f"{what} must be a JSON object")
    if _could_nest_deeper(data, max_depth) and _deeper_than(document, max_depth):
        raise too_deep
    return document
