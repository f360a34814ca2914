"""The caller's request id and trace headers reach the mesh as gRPC metadata only when well formed:
a non-ASCII or oversized one made every mesh call fail (500, or 429 past the metadata limit)."""

from __future__ import annotations

import pytest

from services.edge.middleware import _incoming

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


def test_well_formed_headers_pass_on() -> None:
    found = _incoming(
        scope(
            (b"x-request-id", b"req-42"),
            (b"traceparent", TRACEPARENT.encode()),
            (b"tracestate", b"vendor=value"),
        )
    )
    assert found == ("req-42", TRACEPARENT, "vendor=value")


@pytest.mark.parametrize(
    "request_id",
    ["é".encode(), b"a" * 20_000, b"with space", b"nul\x00", b"\xff\xfe"],
)
def test_an_ill_formed_request_id_is_not_passed_on(request_id: bytes) -> None:
    assert _incoming(scope((b"x-request-id", request_id)))[0] is None


@pytest.mark.parametrize(
    "traceparent",
    ["00-é-b7ad6b7169203331-01".encode(), b"x" * 20_000, TRACEPARENT.upper().encode(), b"00-00-00-00"],
)
def test_an_ill_formed_traceparent_is_dropped_with_its_tracestate(traceparent: bytes) -> None:
    _, parent, state = _incoming(scope((b"traceparent", traceparent), (b"tracestate", b"vendor=value")))
    assert (parent, state) == (None, None)
