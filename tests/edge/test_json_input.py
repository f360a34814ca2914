"""The edge's one JSON decoder: nesting bounded without recursion, refusals that say what is wrong."""

from __future__ import annotations

import json

import pytest

from services.edge.json_input import MAX_DEPTH, InvalidJson, decode_json_object
from services.edge.ws.frames import FrameError, parse_frame


def nested(depth: int) -> bytes:
    """An object whose `name` holds arrays down to `depth` levels, the object counted."""
    return b'{"name":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_a_document_at_the_depth_limit_decodes() -> None:
    assert decode_json_object(nested(MAX_DEPTH), what="the body")["name"] is not None


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 1_025, 100_000])
def test_a_document_nested_deeper_than_the_limit_is_refused_saying_so(depth: int) -> None:
    with pytest.raises(InvalidJson) as refused:
        decode_json_object(nested(depth), what="the body")
    assert refused.value.message == f"the body nests arrays and objects deeper than {MAX_DEPTH} levels"


def test_objects_count_as_levels_as_arrays_do() -> None:
    deep = "1"
    for _ in range(MAX_DEPTH + 1):
        deep = '{"a":' + deep + "}"
    with pytest.raises(InvalidJson, match="deeper than"):
        decode_json_object(deep, what="the frame")


def test_brackets_inside_strings_and_many_shallow_containers_are_not_depth() -> None:
    document = {"text": "[" * 500, "items": [[1], {"a": [2]}] * 500}
    assert decode_json_object(json.dumps(document).encode(), what="the body") == document


def test_the_depth_limit_is_the_callers_to_choose() -> None:
    decode_json_object(nested(3), what="the body", max_depth=3)
    with pytest.raises(InvalidJson, match="deeper than 2 levels"):
        decode_json_object(nested(3), what="the body", max_depth=2)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"", "the body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"a": NaN}', "the body is not valid JSON"),
        (b'{"name": "\\ud800"}', "the body is not valid JSON"),  # a lone surrogate
        (b'{"name": "\xff"}', "the body is not valid JSON"),  # not UTF-8
    ],
)
def test_what_is_not_one_json_object_is_refused_naming_the_body(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidJson) as refused:
        decode_json_object(data, what="the body")
    assert refused.value.message.startswith(fragment), refused.value.message


def test_a_websocket_frame_nested_too_deep_is_invalid_json_not_a_crash() -> None:
    frame = '{"action": "ping", "request_id": "r", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(FrameError) as refused:
        parse_frame(frame)
    assert refused.value.code == "INVALID_JSON"
    assert refused.value.message == f"the frame nests arrays and objects deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize("request_id", ["é", "line\nbreak", "del\x7f", "with space", "", "r" * 129])
def test_a_frame_request_id_that_cannot_be_grpc_metadata_is_refused_by_name(request_id: str) -> None:
    frame = json.dumps({"action": "ping", "request_id": request_id})
    with pytest.raises(FrameError) as refused:
        parse_frame(frame)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert refused.value.message.startswith("request_id: ")


def test_a_visible_ascii_request_id_is_kept() -> None:
    assert parse_frame(json.dumps({"action": "ping", "request_id": "r-42:x"})).request_id == "r-42:x"
