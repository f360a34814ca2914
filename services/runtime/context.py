"""Per-call context carried across `await`s: the request id every log line and outgoing call repeats."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Any

import grpc

REQUEST_ID_HEADER = "x-request-id"

# The servicer context as handlers and interceptors take it. The generated stubs parametrise it by
# request and response; handlers accept any, which is what overriding the generated base needs.
RpcContext = grpc.aio.ServicerContext[Any, Any]

request_id_var: ContextVar[str | None] = ContextVar("macp_request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()
