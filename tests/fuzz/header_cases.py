"""Hostile headers for every operation of the edge's OpenAPI document: request ids and trace
context the edge passes on, bearer tokens whose JWT parts are deep JSON, NUL-laden or not UTF-8,
HTTP Basic client credentials that decode to nothing sensible, a streamed answer's hostile bodies,
and the Idempotency-Key of chat completions."""

from __future__ import annotations

import base64
from collections.abc import Iterator

from tests.fuzz.hostile_json import DEEP, deep_array, encode
from tests.fuzz.http_cases import FORM, JSON, JSON_BODIES, HttpCase, Operation, valid_body, with_raw_string


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _token_with(header: bytes, claims: bytes = b"{}") -> bytes:
    """A JWT-shaped bearer token (no valid signature) whose parts decode to `header` and `claims`."""
    return b"Bearer " + _b64url(header) + b"." + _b64url(claims) + b"." + _b64url(b"signature")


# Under Envoy's 60 KiB of request headers: 20,000 levels are 40 KB of JSON, 54 KB in base64.
TOKEN_DEPTH = 20_000
BEARER_HEADERS: dict[str, bytes] = {
    "not-latin-text": b"Bearer \xff\xfe\xfd",
    "jwt-header-deep-array": _token_with(b"[" * TOKEN_DEPTH + b"]" * TOKEN_DEPTH),
    "jwt-claims-deep-object": _token_with(
        b'{"alg":"RS256","typ":"at+jwt"}', b'{"a":' * (TOKEN_DEPTH // 2) + b"0" + b"}" * (TOKEN_DEPTH // 2)
    ),
    "jwt-header-nul": _token_with(b'{"alg":"RS256","kid":"a\\u0000b"}'),
    "jwt-header-lone-surrogate": _token_with(b'{"alg":"RS256","kid":"\\ud800"}'),
    "jwt-header-invalid-utf8": _token_with(b'{"alg":"RS256","kid":"\xff"}'),
    "jwt-header-huge-number": _token_with(b'{"alg":"RS256","exp":1' + b"0" * 400 + b"}"),
    "jwt-claims-exp-nan": _token_with(b'{"alg":"RS256","typ":"at+jwt"}', b'{"exp":NaN,"iat":1e400}'),
    "jwt-not-base64": b"Bearer !!.@@.##",
    "40k": b"Bearer " + b"x" * 40_000,
}
BASIC_HEADERS: dict[str, bytes] = {
    "basic-not-base64": b"Basic !!!",
    "basic-invalid-utf8": b"Basic " + base64.b64encode(b"\xff\xfe:\xfd"),
    "basic-nul-client-id": b"Basic " + base64.b64encode(b"a\x00b:secret"),
    "basic-nul-secret": b"Basic " + base64.b64encode(b"client:a\x00b"),
    "basic-percent-nul": b"Basic " + base64.b64encode(b"a%00b:secret%FF"),
    "basic-no-colon": b"Basic " + base64.b64encode(b"nocolon"),
    "basic-40k": b"Basic " + base64.b64encode(b"a:" + b"x" * 30_000),
}
COMMON_HEADERS: dict[str, tuple[str, bytes]] = {
    "x-request-id=not-latin-text": ("x-request-id", b"\xff\xfe\xfd"),
    # Past gRPC's hard limit of metadata (16 KiB; between 8 and 16 it refuses at random).
    "x-request-id=20k": ("x-request-id", b"r" * 20_000),
    "x-request-id=spaces-and-quotes": ("x-request-id", b'a "b" \\ c'),
    "traceparent=garbage": ("traceparent", b"\xff-\xfe"),
    "traceparent=version-ff": ("traceparent", b"ff-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"),
    "traceparent=zero-ids": ("traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01"),
    "tracestate=10k": ("tracestate", b"k=" + b"v" * 10_000),
}


def header_attacks(op: Operation) -> Iterator[HttpCase]:
    """Hostile headers: request ids and trace context every route passes on, bearer tokens whose
    JSON parts are deep, NUL-laden or not UTF-8, HTTP Basic client credentials that decode to
    nothing sensible (the OAuth routes), and the Idempotency-Key of chat completions."""
    body, content_type = valid_body(op)

    def case(attack: str, headers: tuple[tuple[str, bytes], ...], malformed: bool = False) -> HttpCase:
        return HttpCase(
            op.label,
            attack,
            op.method,
            op.filled_path,
            body=body,
            content_type=content_type,
            credential=op.credential,
            malformed=malformed,
            headers=headers,
        )

    for attack, (name, value) in COMMON_HEADERS.items():
        yield case(attack, ((name, value),))
    if op.credential == "user":
        for attack, value in BEARER_HEADERS.items():
            yield case(f"authorization={attack}", (("authorization", value),), malformed=True)
    if content_type == FORM:
        for attack, value in BASIC_HEADERS.items():
            yield case(f"authorization={attack}", (("authorization", value),), malformed=True)
    if op.operation_id == "appendMessage":
        # The same route answering with the round's server-sent events: another path to the mesh.
        valid = JSON_BODIES["appendMessage"]
        streamed = (("accept", b"text/event-stream"),)
        for attack, text in (
            (f"text=deep-array-{DEEP}", encode({**valid, "text": deep_array(DEEP)})),
            ("text=nul", encode({**valid, "text": "a\u0000b"})),
            ("text=lone-surrogate", encode({**valid, "text": "\ud800"})),
            ("text=invalid-utf8", with_raw_string(valid, "text", b"\xff\xfe").decode("latin-1")),
            ("id=not-a-uuid", encode({**valid, "id": "x" * 40})),
        ):
            yield HttpCase(
                op.label,
                f"accept=event-stream {attack}",
                op.method,
                op.filled_path,
                body=text.encode("latin-1") if "invalid-utf8" in attack else text.encode(),
                content_type=JSON,
                malformed=True,
                headers=streamed,
            )
    if op.operation_id == "createChatCompletion":
        for attack, value in (
            ("not-latin-text", b"\xff\xfe"),
            ("10k", b"k" * 10_000),
            ("uuid-nul-escape", b"%00"),
        ):
            yield case(f"idempotency-key={attack}", (("idempotency-key", value),))
