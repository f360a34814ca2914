"""The hostile HTTP requests, and those against bodies: every operation with a body gets hostile
documents (depth, size, encodings, syntax, content types) and hostile values in every scalar place
of its schema (NUL, lone surrogates, integers past 2^63, floats where whole numbers go), every OAuth
form hostile fields. Parameters and headers are attacked in parameter_cases.py and header_cases.py;
catalog.py gathers them all.

The catalog is built from the document the edge serves (built here from the same route list, so
the cases are known when pytest collects them) and from one valid body per operation; ids the
requests need (the attacker's agent, conversation, archive, its OAuth client) are slots replaced
when the request is sent, each by a value of the slot's own length, so sizes stay exact.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.edge.app import API_TITLE, API_VERSION, api_routes
from services.edge.routes import openapi_document
from tests.fuzz.hostile_json import (
    DEEP,
    HOSTILE_STRINGS,
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
    "createSpeech": {"model": AGENT, "input": "hi", "voice": "alloy", "response_format": "wav"},
    "oauthRegister": {"client_name": "fuzz", "grant_types": ["client_credentials"]},
    # The discard port: nothing answers there, so no attack makes the gateway wait on an upstream.
    # A static credential, so that attacks reach its checks and its sealing too.
    "createToolServer": {
        "name": "fuzz",
        "url": "http://127.0.0.1:9/mcp",
        "auth": "UPSTREAM_AUTH_STATIC",
        "staticCredential": {"header": "x-api-key", "value": "fuzz-key"},
    },
    "callTool": {"arguments": {"a": 1}},
    # A public name that never resolves here: no attack makes the deliverer reach anything.
    "createWebhook": {"url": "https://hooks.example.com/macp", "eventKinds": ["round_completed"]},
    # The attacker's token has no macp:admin: every well-formed change is refused (403).
    "setTenantPlan": {"plan": "pro"},
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
    # The sign-in page's form; sent without the page's cookie, as an attacker's form would be.
    "oauthAuthorizeSignIn": {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": "http://127.0.0.1:8080/console/callback",
        "state": "fuzz",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "csrf_token": "fuzz",
        "username": USERNAME,
        "password": PASSWORD,
    },
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
        op, f"{first}=invalid-utf8", with_raw_string(valid, first, b"\xff\xfe\xfd"), malformed=True
    )
    yield _json_case(
        op, f"{first}=overlong-utf8-slash", with_raw_string(valid, first, b"\xc0\xaf"), malformed=True
    )
    yield _json_case(
        op, f"{first}=overlong-utf8-nul", with_raw_string(valid, first, b"\xc0\x80"), malformed=True
    )
    yield _json_case(
        op, f"{first}=utf8-encoded-surrogate", with_raw_string(valid, first, b"\xed\xa0\x80"), malformed=True
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


def with_raw_string(valid: dict[str, Any], member: str, raw: bytes) -> bytes:
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


def form_body(fields: dict[str, str] | list[tuple[str, str]]) -> bytes:
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

    encoded = form_body(valid).decode()
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


def valid_body(op: Operation) -> tuple[bytes | None, str | None]:
    """The operation's valid body and its media type (None, None without one): what cases that
    attack the parameters and headers send, so the body is never what answers them."""
    content_type = op.body_media_type()
    if content_type == JSON and op.operation_id in JSON_BODIES:
        return encode(JSON_BODIES[op.operation_id]).encode(), content_type
    if content_type == FORM and op.operation_id in FORM_BODIES:
        return form_body(FORM_BODIES[op.operation_id]), content_type
    return None, content_type


def slot_of(op: Operation, name: str) -> str:
    if name == "archive_id":
        return ARCHIVE
    return CONVERSATION if op.path.startswith("/v1/conversations/") else AGENT
