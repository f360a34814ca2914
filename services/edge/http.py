"""Request and response bodies: JSON in the proto3 JSON mapping, bounded, with errors naming the field."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse

from services.edge.errors import FastJSONResponse, HttpError
from services.edge.json_input import InvalidJson, decode_json_object
from services.runtime.protos import descriptor_of

M = TypeVar("M", bound=Message)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing more than `max_bytes` without reading the rest of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "BODY_TOO_LARGE", f"the body is over {max_bytes} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "BODY_TOO_LARGE", f"the body is over {max_bytes} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The JSON object of an application/json body (at most `max_bytes`), refused by name otherwise."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise HttpError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json"
        )
    body = await read_body(request, max_bytes)
    try:
        return decode_json_object(body, what="the body")
    except InvalidJson as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, "INVALID_JSON", exc.message) from None


def _refuse_nulls(document: dict[str, Any], descriptor: Descriptor, prefix: str = "") -> None:
    """400 naming a member set to null. The proto3 JSON mapping reads null as the field's default,
    but the OpenAPI document types every member (an object, a string...), and a client meaning
    "the default" leaves the member out; null stays a value inside a Struct (a tool's arguments)."""
    fields = {field.json_name: field for field in descriptor.fields}
    fields |= {field.name: field for field in descriptor.fields}
    for key, value in document.items():
        field = fields.get(key)
        if field is None:
            continue  # an unknown member: json_format refuses it by name
        message = field.message_type
        if message is not None and message.full_name.startswith("google.protobuf."):
            continue  # well-known types keep their own mapping (Value's null is a value)
        if value is None:
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                "INVALID_ARGUMENT",
                f"{prefix}{key}: null; leave the member out for its default",
            )
        if message is None or not isinstance(value, (dict, list)):
            continue
        if message.GetOptions().map_entry:
            inner = message.fields_by_name["value"].message_type
            if inner is None or inner.full_name.startswith("google.protobuf.") or not isinstance(value, dict):
                continue
            for map_key, item in value.items():
                if isinstance(item, dict):
                    _refuse_nulls(item, inner, f"{prefix}{key}.{map_key}.")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    _refuse_nulls(item, message, f"{prefix}{key}[{index}].")
        elif isinstance(value, dict):
            _refuse_nulls(value, message, f"{prefix}{key}.")


def parse_document(document: dict[str, Any], message: M) -> M:
    """Decode a JSON object into `message`; unknown fields, wrong types and nulls are refused by name."""
    _refuse_nulls(document, descriptor_of(type(message)))
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", str(exc)) from None
    return message


async def parse_message(request: Request, message: M, max_bytes: int) -> M:
    """Decode a JSON body into `message`; unknown fields and wrong types are refused by name."""
    return parse_document(await read_json_object(request, max_bytes), message)


def message_response(
    message: Message, status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    document = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return FastJSONResponse(document, status_code=status, headers=headers)
