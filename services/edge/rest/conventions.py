"""What the resource routes (agents, conversations, messages, archives) share: ETag and If-Match,
query parameters, PATCH bodies and their field masks, and the options of each call to the service.

Conventions (the OpenAPI document says the same per route):
- A resource's etag is its strong `ETag` header (`"<etag>"`); PATCH and DELETE take it back in
  `If-Match` (RFC 9110 section 13.1.1). PATCH needs one: without If-Match (or an `etag` in the body)
  it answers 428 Precondition Required (RFC 6585), so that no client overwrites blindly.
- A PATCH body holds the fields to change; the update mask is the body's top-level keys, so a
  message-valued field (`generation`, `limits`, `bidding`) is replaced whole, and a key set to its
  zero value clears the field. `etag` in the body stands for If-Match; `id` must name the path's.
- Query parameters not listed for a route are refused by name, like unknown body fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any, TypeVar

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from starlette.requests import Request

from services.edge.context import EdgeContext
from services.edge.errors import HttpError
from services.edge.http import parse_document, read_json_object
from services.edge.routes import Link
from services.edge.schema import JsonSchema
from services.runtime.protos import descriptor_of

# The resources PATCH changes: each has an `id` and an `etag`.
Patched = TypeVar("Patched", bound=Message)

# The query parameters of every List route (AIP-158), as the OpenAPI document declares them.
PAGE_QUERY: tuple[tuple[str, JsonSchema, str], ...] = (
    # 0, as every List request's page_size, means the default (macp/common/v1/paging.proto).
    ("page_size", {"type": "integer", "minimum": 0, "maximum": 1000}, "items per page (0 or left out: 50)"),
    ("page_token", {"type": "string", "maxLength": 1024}, "the nextPageToken of the previous page"),
)
# A query parameter many handlers read given empty (`status=`) as left out: its schema says so.
EMPTY = {"type": "string", "maxLength": 0}


def or_empty(schema: JsonSchema) -> JsonSchema:
    """`schema` of a query parameter whose handler reads the empty value as the parameter left out."""
    return {"anyOf": [schema, EMPTY]}


_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
# OpenAPI runtime expressions for links: the id and version (ETag, for If-Match) of the resource an
# answer holds, and the id in the path of the request answered.
ITS_ID = ("path.id", "$response.body#/id")
ITS_ETAG = ("header.If-Match", "$response.header.ETag")
SAME_ID = ("path.id", "$request.path.id")


def resource_links(noun: str) -> tuple[Link, ...]:
    """Links to get, update and delete the resource an answer holds (`Agent`, `Conversation`)."""
    return (
        Link(f"Get{noun}", f"get{noun}", (ITS_ID,)),
        Link(f"Update{noun}", f"update{noun}", (ITS_ID, ITS_ETAG)),
        Link(f"Delete{noun}", f"delete{noun}", (ITS_ID, ITS_ETAG)),
    )


# Statuses every authenticated route may answer besides its own.
COMMON_ERRORS = (400, 401, 403, 503)
WRITE_ERRORS = (*COMMON_ERRORS, 413, 415)


def invalid(message: str) -> HttpError:
    """400 INVALID_ARGUMENT, answered by the edge itself; `message` starts with the field's name."""
    return HttpError(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", message)


def invalid_parameter(parameter: str, problem: str) -> HttpError:
    """400 INVALID_ARGUMENT naming a query parameter and what is wrong with it."""
    return invalid(f"{parameter}: {problem}")


def query_time(request: Request, parameter: str, default: datetime) -> datetime:
    """An RFC 3339 time query parameter with its offset (`default` when absent or empty)."""
    text = request.query_params.get(parameter)
    if not text:
        return default
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_parameter(
            parameter, f"expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise invalid_parameter(parameter, "the time needs an offset (Z or +hh:mm)")
    return moment


def etag_header(etag: str) -> dict[str, str]:
    return {"etag": f'"{etag}"'}


def if_match(request: Request) -> str:
    """The etag of an `If-Match` header (empty when absent or `*`, which any current etag matches)."""
    value = request.headers.get("if-match", "").strip()
    if value in ("", "*"):
        return ""
    if "," in value:
        raise invalid("If-Match: send exactly one etag")
    if value.startswith("W/"):
        # Updates need a strong comparison (RFC 9110 section 13.1.1): a weak etag never matches.
        raise HttpError(
            HTTPStatus.PRECONDITION_FAILED, "FAILED_PRECONDITION", "If-Match: a weak etag never matches"
        )
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        raise HttpError(
            HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", 'If-Match: an etag is quoted, as in "abc"'
        )
    return value[1:-1]


def query(request: Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters, refusing any the route does not declare (or one given twice)."""
    names = set(allowed)
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in names:
            expected = ", ".join(sorted(names)) or "none"
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                "INVALID_ARGUMENT",
                f"{name}: unknown query parameter (expected: {expected})",
            )
        if name in values:
            raise invalid(f"{name}: given more than once")
        values[name] = value
    return values


def integer(values: Mapping[str, str], name: str, bits: int = 32) -> int:
    """A whole-number query parameter (0 when absent) that fits the signed `bits`-bit proto field it
    goes into: a larger one would make building the request fail (`ValueError: Value out of
    range`), a 500. Its own rules (a page_size from 1 to 1000) are the service's to check. Given
    empty (`page_size=`) it is refused: the document types it an integer, which "" is not."""
    text = values.get(name)
    if text is None:
        return 0
    if text == "":
        raise invalid(f"{name}: empty; give a whole number or leave the parameter out")
    # ASCII digits only: `str.isdigit` also takes "²", which `int` then refuses.
    if _WHOLE_NUMBER.fullmatch(text) is None:
        raise invalid(f"{name}: must be a whole number")
    limit = 1 << (bits - 1)
    # Not parsed beyond 64 bits' digits: `int` refuses more than 4,300 digits with a ValueError.
    number = int(text) if len(text) <= 21 else limit
    if not -limit <= number < limit:
        raise invalid(f"{name}: out of range (a {bits}-bit integer, {-limit} to {limit - 1})")
    return number


def patch_mask(document: dict[str, Any], message: type[Message]) -> FieldMask:
    """The update mask of a PATCH body: its top-level keys (JSON or proto names) as field paths,
    leaving out `etag` and `id`, which name the version and the resource rather than a change."""
    fields = descriptor_of(message).fields
    by_name = {field.json_name: field.name for field in fields} | {field.name: field.name for field in fields}
    paths = [by_name.get(key, key) for key in document]
    return FieldMask(paths=[path for path in paths if path not in ("etag", "id")])


def page(values: Mapping[str, str]) -> dict[str, Any]:
    """The page_size and page_token fields of a List request, from the query (every List request's
    page_size is an int32: macp/common/v1/paging.proto)."""
    return {"page_size": integer(values, "page_size"), "page_token": values.get("page_token", "")}


async def patch_request(request: Request, edge: EdgeContext, resource: Patched) -> tuple[Patched, FieldMask]:
    """A PATCH of `/…/{id}`: the resource holding the body's fields, its id and the etag it is
    conditional on, and the update mask of the body's keys."""
    query(request, ())
    resource_id = request.path_params["id"]
    document = await read_json_object(request, edge.settings.max_body_bytes)
    same_id(document, resource_id)
    # The path names the resource and If-Match (else the body) the version the change is for.
    changes = parse_document({**document, "id": resource_id, "etag": patch_etag(request, document)}, resource)
    return changes, patch_mask(document, type(resource))


def patch_etag(request: Request, document: dict[str, Any]) -> str:
    """The etag a PATCH is conditional on: If-Match, else the body's `etag`; 428 without either."""
    etag = if_match(request)
    body_etag = document.get("etag")
    if not etag and isinstance(body_etag, str):
        etag = body_etag
    if not etag:
        raise HttpError(
            HTTPStatus.PRECONDITION_REQUIRED,
            "PRECONDITION_REQUIRED",
            "If-Match: send the etag you last read (the ETag header of a GET)",
        )
    return etag


def same_id(document: dict[str, Any], path_id: str, key: str = "id") -> None:
    """A body may repeat the path's id, not name another resource."""
    given = document.get(key)
    if given not in (None, "", path_id):
        raise HttpError(
            HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", f"{key}: must be the id in the path or absent"
        )
