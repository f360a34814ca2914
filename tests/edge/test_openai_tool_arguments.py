"""A tool call's arguments are written the same way every time, whatever order its Struct holds
them in: a chat completion replayed under its Idempotency-Key must read as the first answer did."""

from __future__ import annotations

from google.protobuf import struct_pb2

from services.edge.rest.openai_tools import arguments_json


def test_the_same_arguments_read_the_same_whatever_order_they_were_set_in() -> None:
    first, second = struct_pb2.Struct(), struct_pb2.Struct()
    first.update({"city": "Oslo", "days": 2})
    second.update({"days": 2, "city": "Oslo"})
    parsed = struct_pb2.Struct.FromString(second.SerializeToString())
    written = {arguments_json(first), arguments_json(second), arguments_json(parsed)}
    assert written == {'{"city":"Oslo","days":2}'}


def test_nested_objects_are_sorted_and_whole_numbers_stay_integers() -> None:
    arguments = struct_pb2.Struct()
    arguments.update({"where": {"lon": 10.75, "lat": 59.9}, "count": 3.0, "tags": ["b", "a"]})
    assert arguments_json(arguments) == '{"count":3,"tags":["b","a"],"where":{"lat":59.9,"lon":10.75}}'
