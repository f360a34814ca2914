"""Request and response bodies: JSON in the proto3 JSON mapping, bounded, with errors naming the field."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse

from services.edge.errors import FastJSONResponse, HttpError
from services.edge.json_input import InvalidJson, decode_json_object

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


def parse_document(document: dict[str, Any], message: M) -> M:
    """Decode a JSON object into `message`; unknown fields and wrong types are refused by name."""
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
