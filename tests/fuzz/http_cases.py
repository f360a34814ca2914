"""The hostile HTTP requests: every operation of the edge's OpenAPI document gets its query and path
parameters attacked, and every operation with a body gets hostile documents (depth, size,
encodings, syntax, content types) and hostile values in every scalar place of its schema (NUL,
lone surrogates, integers past 2^63, floats where whole numbers go).

The catalog is built from the document the edge serves (built here from the same route list, so
the cases are known when pytest collects them) and from one valid body per operation; ids the
requests need (the attacker's agent, conversation, archive, its OAuth client) are slots replaced
when the request is sent, each by a value of the slot's own length, so sizes stay exact.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.edge.app import API_TITLE, API_VERSION, api_routes
from services.edge.routes import openapi_document
from tests.fuzz import page_tokens
from tests.fuzz.hostile_json import (
    DEEP,
    HOSTILE_DURATIONS,
    HOSTILE_STRINGS,
    HOSTILE_TIMESTAMPS,
    deep_array,
    deep_object,
    duplicated,
    encode,
    hostile_values,
    leaves,
    with_value,
)

# The fuzz world's body limit (set in its environment, so both agree).
MAX_BODY_BYTES = 1_048_576
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# Slots for ids known only once the world runs: UUID-shaped, as long as the ids replacing them.
AGENT = "a9e7a9e7-0000-4000-8000-00000000a9e7"
CONVERSATION = "c0c0c0c0-0000-4000-8000-00000000c0c0"
ARCHIVE = "a4c4a4c4-0000-4000-8000-00000000a4c4"
# Slots of the OAuth forms; replaced by values of any length (form size cases are not exact).
CLIENT_ID = "@client_id@"
CLIENT_SECRET = "@client_secret@"
USERNAME = "@username@"
PASSWORD = "@password@"
TOKEN = "@token@"


def edge_document() -> dict[str, Any]:
    """The edge's OpenAPI document, as `GET /v1/openapi.json` serves it."""
    return openapi_document(api_routes(), title=API_TITLE, version=API_VERSION)


# One valid body per operation with a body: what each hostile variant starts from.
JSON_BODIES: dict[str, dict[str, Any]] = {
    "createAgent": {"name": "fuzz", "provider": "local", "model": "echo-1", "systemPrompt": "be brief"},
    "updateAgent": {"name": "fuzzed", "systemPrompt": "be briefer"},
    "createConversation": {
        "title": "fuzz",
        "participantAgentIds": [AGENT],
        "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
        "limits": {"maxAgentTurnsPerUserMessage": 1},
    },
    "updateConversation": {"title": "fuzzed"},
    "appendMessage": {"text": "hello"},
    "archiveConversation": {"close": False},
    "createChatCompletion": {"model": AGENT, "messages": [{"role": "user", "content": "hi"}]},
    "oauthRegister": {"client_name": "fuzz", "grant_types": ["client_credentials"]},
}
FORM_BODIES: dict[str, dict[str, str]] = {
    "oauthToken": {
        "grant_type": "password",
        "username": USERNAME,
        "password": PASSWORD,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    },
    "oauthRevoke": {"token": TOKEN, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    "oauthIntrospect": {"token": TOKEN, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
}
# Operations whose body may be left out (an empty body is the message's defaults).
OPTIONAL_BODIES = frozenset({"archiveConversation"})


@dataclass(frozen=True)
class HttpCase:
    """One hostile request.

    route: the operation's label (`POST /v1/agents`); attack: what is hostile about it.
    path: the path sent, parameters filled (slots, or hostile text already percent-encoded).
    query: the query string as sent, percent-encoded. body: the bytes sent, slots inside.
    credential: `user` (the attacker tenant's edge token), `initial` (the token service's initial
    access token, for registration) or `none`; `headers` are sent after it (a hostile
    Authorization replaces it).
    malformed: no server could take it (invalid JSON, depth, size, media type): only a 4xx is right.
    """

    route: str
    attack: str
    method: str
    path: str
    query: str = ""
    body: bytes | None = None
    content_type: str | None = None
    credential: str = "user"
    malformed: bool = False
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.route} | {self.attack}"

    def describe(self) -> str:
        """The request in a line: enough to send it again by hand."""
        body = b"" if self.body is None else self.body
        shown = body[:160] + (f"... ({len(body)} bytes)".encode() if len(body) > 160 else b"")
        query = f"?{self.query}" if self.query else ""
        headers = "".join(f" {name}={value[:120]!r}" for name, value in self.headers)
        return (
            f"{self.method} {self.path}{query} content-type={self.content_type} "
            f"credential={self.credential}{headers} body={shown!r}"
        )


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def filled_path(self) -> str:
        """The path with the attacker's own ids in its parameters."""
        conversation = self.path.startswith("/v1/conversations/")
        return self.path.replace("{id}", CONVERSATION if conversation else AGENT).replace(
            "{archive_id}", ARCHIVE
        )

    @property
    def credential(self) -> str:
        if self.operation_id == "oauthRegister":
            return "initial"
        return "none" if self.path.startswith(("/oauth2/", "/.well-known/")) else "user"

    def body_media_type(self) -> str | None:
        body = self.spec.get("requestBody")
        return next(iter(body["content"])) if body else None


def operations(document: dict[str, Any]) -> list[Operation]:
    return [
        Operation(spec["operationId"], method.upper(), path, spec)
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
    ]


def _json_case(op: Operation, attack: str, text: str | bytes, **fields: Any) -> HttpCase:
    body = text.encode() if isinstance(text, str) else text
    fields.setdefault("content_type", JSON)
    fields.setdefault("credential", op.credential)
    return HttpCase(op.label, attack, op.method, op.filled_path, body=body, **fields)


def _padded_to(document: dict[str, Any], size: int) -> bytes:
    """`document` as JSON followed by spaces up to exactly `size` bytes (still one valid document)."""
    text = encode(document).encode()
    return text + b" " * (size - len(text))


def document_attacks(op: Operation, valid: dict[str, Any]) -> Iterator[HttpCase]:
    """Hostile documents for a JSON body: each breaks the document, not a value."""
    first = next(iter(valid))
    valid_text = encode(valid)
    yield _json_case(
        op, f"{first}=deep-array-{DEEP}", encode({**valid, first: deep_array(DEEP)}), malformed=True
    )
    yield _json_case(
        op, f"{first}=deep-object-{DEEP}", encode({**valid, first: deep_object(DEEP)}), malformed=True
    )
    yield _json_case(op, f"top-level-deep-array-{DEEP}", encode(deep_array(DEEP)), malformed=True)
    for depth in (1_000, 5_000):
        yield _json_case(
            op, f"{first}=deep-array-{depth}", encode({**valid, first: deep_array(depth)}), malformed=True
        )
    if op.credential != "none":
        # The unauthenticated stranger: the same bodies with no token at all.
        yield _json_case(
            op,
            f"no-credential {first}=deep-array-{DEEP}",
            encode({**valid, first: deep_array(DEEP)}),
            credential="none",
            malformed=True,
        )
    yield _json_case(op, "size=limit", _padded_to(valid, MAX_BODY_BYTES))
    yield _json_case(op, "size=limit+1", _padded_to(valid, MAX_BODY_BYTES + 1), malformed=True)
    huge = {**valid, first: "x" * (MAX_BODY_BYTES - 200 - len(valid_text))}
    yield _json_case(op, f"{first}=string-near-limit", encode(huge))
    yield _json_case(
        op, f"{first}=invalid-utf8", _with_raw_string(valid, first, b"\xff\xfe\xfd"), malformed=True
    )
    yield _json_case(
        op, f"{first}=overlong-utf8-slash", _with_raw_string(valid, first, b"\xc0\xaf"), malformed=True
    )
    yield _json_case(
        op, f"{first}=overlong-utf8-nul", _with_raw_string(valid, first, b"\xc0\x80"), malformed=True
    )
    yield _json_case(
        op, f"{first}=utf8-encoded-surrogate", _with_raw_string(valid, first, b"\xed\xa0\x80"), malformed=True
    )
    yield _json_case(op, "utf16-le-with-bom", b"\xff\xfe" + valid_text.encode("utf-16-le"))
    yield _json_case(op, "utf16-be-no-bom", valid_text.encode("utf-16-be"))
    yield _json_case(op, "utf32-le-with-bom", valid_text.encode("utf-32"))
    yield _json_case(op, "utf8-bom", b"\xef\xbb\xbf" + valid_text.encode())
    yield _json_case(
        op,
        "raw-nul-byte-between-members",
        valid_text.replace(",", ",\x00", 1).replace("{", "{\x00", 1),
        malformed=True,
    )
    yield _json_case(op, "duplicate-keys", encode(duplicated(valid)))
    yield _json_case(op, "truncated", valid_text[: len(valid_text) // 2], malformed=True)
    yield _json_case(op, "trailing-garbage", valid_text + "}]garbage", malformed=True)
    yield _json_case(op, "empty", b"", malformed=op.operation_id not in OPTIONAL_BODIES)
    for name, top in (
        ("null", "null"),
        ("array", "[]"),
        ("string", '"x"'),
        ("number", "1e400"),
        ("NaN", "NaN"),
    ):
        yield _json_case(op, f"top-level-{name}", top, malformed=True)
    yield _json_case(op, "single-quotes", valid_text.replace('"', "'"), malformed=True)
    for media_type in ("text/plain", "application/xml", "multipart/form-data; boundary=x", FORM):
        yield _json_case(
            op, f"content-type={media_type}", valid_text, content_type=media_type, malformed=True
        )
    yield _json_case(op, "no-content-type", valid_text, content_type=None)
    yield _json_case(
        op, "content-type=json-charset-utf16", valid_text, content_type="application/json; charset=utf-16"
    )


def _with_raw_string(valid: dict[str, Any], member: str, raw: bytes) -> bytes:
    """The document with `member` a string holding `raw` bytes, as sent (no escaping, no decoding)."""
    marker = "\u2603marker\u2603"
    text = (
        encode({**valid, member: marker}).encode().replace(json.dumps(marker).encode(), b'"a' + raw + b'b"')
    )
    return text


def value_attacks(op: Operation, valid: dict[str, Any], document: dict[str, Any]) -> Iterator[HttpCase]:
    """Hostile values in every scalar place of the body's schema, the rest of the body valid."""
    schema = op.spec["requestBody"]["content"][JSON]["schema"]
    for leaf in leaves(schema, document["components"]["schemas"]):
        for name, value in hostile_values(leaf).items():
            body = encode(with_value(valid, leaf.path, value))
            # No string field may hold NUL or a lone surrogate (the contract refuses them): but a
            # PATCH's `etag` in the body is ignored beside If-Match, which the attack always sends.
            unstorable = name in HOSTILE_STRINGS and not (op.method == "PATCH" and leaf.name == "etag")
            yield _json_case(op, f"{leaf.name}={name}", body, malformed=unstorable)


def _form(fields: dict[str, str] | list[tuple[str, str]]) -> bytes:
    pairs = fields.items() if isinstance(fields, dict) else fields
    return "&".join(
        f"{urllib.parse.quote(k, safe='@')}={urllib.parse.quote(v, safe='@')}" for k, v in pairs
    ).encode()


def form_attacks(op: Operation, valid: dict[str, str], document: dict[str, Any]) -> Iterator[HttpCase]:
    """Hostile OAuth forms: percent-encoded bytes no UTF-8 text holds, NUL, huge and repeated
    fields in every parameter, JSON bodies (deep ones too) and other media types."""
    schema = op.spec["requestBody"]["content"][FORM]["schema"]
    names = list(
        dict.fromkeys([*valid, *(leaf.name for leaf in leaves(schema, document["components"]["schemas"]))])
    )

    def case(attack: str, body: bytes, content_type: str | None = FORM, malformed: bool = False) -> HttpCase:
        return HttpCase(
            op.label,
            attack,
            op.method,
            op.path,
            body=body,
            content_type=content_type,
            credential="none",
            malformed=malformed,
        )

    encoded = _form(valid).decode()
    for name in names:
        for attack, raw in (
            ("nul", "a%00b"),
            ("invalid-utf8", "a%FF%FEb"),
            ("overlong-utf8", "a%C0%AFb"),
            ("utf8-encoded-surrogate", "%ED%A0%80"),
            ("lone-surrogate-escape", "%5Cud800"),
        ):
            others = "&".join(part for part in encoded.split("&") if not part.startswith(f"{name}="))
            body = f"{others}&{name}={raw}".lstrip("&").encode()
            yield case(
                f"{name}={attack}",
                body,
                malformed=attack in ("invalid-utf8", "overlong-utf8", "utf8-encoded-surrogate"),
            )
        yield case(f"{name}=repeated", f"{encoded}&{name}=again".encode())
        yield case(f"{name}=100k", f"{encoded}&{name}={'x' * 100_000}".encode())
    yield case(
        "size=limit+1",
        encoded.encode() + b"&pad=" + b"x" * (MAX_BODY_BYTES + 1 - len(encoded) - 5),
        malformed=True,
    )
    yield case("100k-fields", b"&".join(b"f%d=1" % i for i in range(100_000)), malformed=True)
    yield case("raw-nul-byte", encoded.encode() + b"\x00", malformed=True)
    yield case("no-equals", b"grant_type", malformed=True)
    yield case("empty", b"", malformed=True)
    json_body = json.dumps(valid).encode()
    yield case("json-body", json_body, content_type=JSON)
    yield case(
        f"json-body-deep-array-{DEEP}",
        encode({"grant_type": deep_array(DEEP)}).encode(),
        content_type=JSON,
        malformed=True,
    )
    yield case(
        f"json-top-level-deep-array-{DEEP}",
        encode(deep_array(DEEP)).encode(),
        content_type=JSON,
        malformed=True,
    )
    yield case("json-body-nul", encode({k: "a\u0000b" for k in valid}).encode(), content_type=JSON)
    yield case("json-body-invalid-utf8", b'{"grant_type": "\xff"}', content_type=JSON, malformed=True)
    for media_type in ("text/plain", "multipart/form-data; boundary=x"):
        yield case(f"content-type={media_type}", encoded.encode(), content_type=media_type, malformed=True)
    yield case("no-content-type", encoded.encode(), content_type=None)


# Hostile values of query parameters, percent-encoded as sent.
INTEGER_QUERY_VALUES: dict[str, str] = {
    "2^31-1": str(2**31 - 1),
    "2^31": str(2**31),
    "2^32": str(2**32),
    "2^63": str(2**63),
    "2^64": str(2**64),
    "-2^63-1": str(-(2**63) - 1),
    "10^30": "1" + "0" * 30,
    "-1": "-1",
    "0": "0",
    "1.5": "1.5",
    "1e3": "1e3",
    "superscript-two": urllib.parse.quote("\u00b2"),
    "fullwidth-one": urllib.parse.quote("\uff11"),
    "arabic-indic-five": urllib.parse.quote("\u0665"),
    "nul": "1%00",
    "invalid-utf8": "%FF",
    "space-padded": "%201",
}
STRING_QUERY_VALUES: dict[str, str] = {
    "nul": "a%00b",
    "invalid-utf8": "a%FF%FEb",
    "overlong-utf8": "a%C0%AFb",
    "utf8-encoded-surrogate": "%ED%A0%80",
    "8k": "x" * 8_000,
}
PATH_VALUES: dict[str, str] = {
    "nul": "%00",
    "uuid-with-nul": "00000000-0000-4000-8000-00000000000%00",
    "invalid-utf8": "%FF%FE",
    "overlong-utf8": "%C0%AF",
    "utf8-encoded-surrogate": "%ED%A0%80",
    "dot-dot": "..%2F..%2Fv1%2Fagents",
    "8k": "x" * 8_000,
    "uppercase-uuid": AGENT.upper(),
}


def _special_query_values(schema: dict[str, Any]) -> dict[str, str]:
    """Values past the ranges a parameter's type implies: timestamps, durations, months, event ids."""
    pattern = str(schema.get("pattern", ""))
    if schema.get("format") == "date-time":
        return {name: urllib.parse.quote(value) for name, value in HOSTILE_TIMESTAMPS.items()}
    if pattern.endswith("s$"):
        return {name: urllib.parse.quote(value) for name, value in HOSTILE_DURATIONS.items()}
    if "{4}-" in pattern:  # a month, YYYY-MM
        return {"month-13": "2026-13", "year-0": "0000-01", "year-9999-month-99": "9999-99"}
    if "A-Za-z0-9._:-" in pattern:  # an event id, <ms>-<seq>
        return {"ms-2^64": f"{2**64}-0", "seq-2^64": f"0-{2**64}", "negative": "-1-0"}
    return {}


def parameter_attacks(op: Operation) -> Iterator[HttpCase]:
    body = None
    content_type = op.body_media_type()
    if content_type == JSON and op.operation_id in JSON_BODIES:
        body = encode(JSON_BODIES[op.operation_id]).encode()
    elif content_type == FORM and op.operation_id in FORM_BODIES:
        body = _form(FORM_BODIES[op.operation_id])

    def case(attack: str, path: str, query: str = "") -> HttpCase:
        return HttpCase(
            op.label,
            attack,
            op.method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            credential=op.credential,
        )

    for parameter in op.spec.get("parameters", []):
        name = parameter["name"]
        if parameter["in"] == "query":
            values = (
                INTEGER_QUERY_VALUES
                if parameter["schema"].get("type") == "integer"
                else {**STRING_QUERY_VALUES, **_special_query_values(parameter["schema"])}
            )
            for attack, value in values.items():
                yield case(f"?{name}={attack}", op.filled_path, f"{name}={value}")
            if name == "page_token" and op.label in page_tokens.LISTS:
                for cursor in page_tokens.CURSORS:
                    forged = page_tokens.slot(op.label, cursor)
                    yield case(f"?{name}=forged-{cursor}", op.filled_path, f"{name}={forged}")
            yield case(f"?{name}=repeated", op.filled_path, f"{name}=1&{name}=2")
        elif parameter["in"] == "path":
            for attack, value in PATH_VALUES.items():
                yield case(f"{{{name}}}={attack}", op.filled_path.replace(_slot_of(op, name), value))
    yield case("?unknown-parameter-with-nul", op.filled_path, "%00=1")


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
    body = None
    content_type = op.body_media_type()
    if content_type == JSON and op.operation_id in JSON_BODIES:
        body = encode(JSON_BODIES[op.operation_id]).encode()
    elif content_type == FORM and op.operation_id in FORM_BODIES:
        body = _form(FORM_BODIES[op.operation_id])

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
            ("text=invalid-utf8", _with_raw_string(valid, "text", b"\xff\xfe").decode("latin-1")),
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


def _slot_of(op: Operation, name: str) -> str:
    if name == "archive_id":
        return ARCHIVE
    return CONVERSATION if op.path.startswith("/v1/conversations/") else AGENT


def http_cases(document: dict[str, Any]) -> list[HttpCase]:
    """Every hostile request, in a fixed order."""
    cases: list[HttpCase] = []
    for op in operations(document):
        cases += parameter_attacks(op)
        cases += header_attacks(op)
        media_type = op.body_media_type()
        if media_type == JSON:
            valid = JSON_BODIES[op.operation_id]
            cases += document_attacks(op, valid)
            cases += value_attacks(op, valid, document)
        elif media_type == FORM:
            cases += form_attacks(op, FORM_BODIES[op.operation_id], document)
    ids = [case.id for case in cases]
    duplicates = {case_id for case_id in ids if ids.count(case_id) > 1}
    assert not duplicates, duplicates
    return cases
