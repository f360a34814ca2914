"""Per-call context carried across `await`s: the request id every log line and outgoing call repeats."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

REQUEST_ID_HEADER = "x-request-id"

# The servicer context as handlers and interceptors take it. The generated stubs parametrise it by
# request and response; handlers accept any, which is what overriding the generated base needs.
RpcContext = grpc.aio.ServicerContext[Any, Any]

request_id_var: ContextVar[str | None] = ContextVar("macp_request_id", default=None)

# A request id travels as gRPC metadata on every call made for it, which takes visible ASCII only:
# a caller's id of any other form (or longer) would fail those calls, so it is never taken.
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID_FORM = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")


def is_request_id(text: str) -> bool:
    """Whether a caller's `text` may serve as a request id: 1 to 128 visible ASCII characters."""
    return _REQUEST_ID_FORM.fullmatch(text) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()


def reset_quietly(var: ContextVar[Any], token: Token[Any]) -> None:
    """`var.reset(token)`, or nothing when `token` belongs to another Context.

    A streaming call's async generator may be closed outside the task that ran it: when a client
    cancels while the server is sending, grpc.aio (or the ASGI server) drops the suspended generator
    and the event loop's finalizer closes it in a task of its own, in another Context. There `reset`
    raises ValueError ("Token ... was created in a different Context"). Leaving the variable is
    right: the Context that holds this call's value belonged to the finished task and goes away with
    it, and whatever the closing task's Context holds is not this call's to undo. Every reset of a
    per-call variable goes through here, so no cancelled stream can raise that error.
    """
    with contextlib.suppress(ValueError):
        var.reset(token)


@contextlib.contextmanager
def setting(var: ContextVar[T], value: T) -> Iterator[None]:
    """`var` is `value` inside the block, and what it was after (reset through `reset_quietly`)."""
    token = var.set(value)
    try:
        yield
    finally:
        reset_quietly(var, token)
