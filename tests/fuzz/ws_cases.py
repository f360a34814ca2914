"""The hostile WebSocket frames: for every action of docs/websocket.md, hostile values in each of its
fields (NUL, lone surrogates, huge and non-finite numbers, wrong JSON types), and for the
connection, hostile frames as such (depth, size at and over the frame limit, invalid UTF-8 text,
binary, not JSON, duplicate keys).

Each case names what the edge may do about it: answer (an error frame, or the action's reply), or
close with one documented code (1009 for a frame over the limit, 1007 for text that is not UTF-8).
Anything else (1011, silence, an INTERNAL error) is a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.fuzz.hostile_json import (
    HOSTILE_NUMBERS,
    HOSTILE_STRINGS,
    Pairs,
    deep_array,
    deep_object,
    encode,
)
from tests.fuzz.http_cases import AGENT, CONVERSATION

# The fuzz world's frame limit (the edge's default, set in its environment so both agree).
MAX_FRAME_BYTES = 65_536
# Deep, and still under the frame limit: 30,000 levels are 60,000 bytes of brackets.
FRAME_DEPTH = 30_000
OBJECT_DEPTH = 10_000  # `{"a":` and `}`: six bytes a level

# One valid frame per action, ids of the attacker's own conversation and agent.
FRAMES: dict[str, dict[str, Any]] = {
    "ping": {"action": "ping", "request_id": "r-1"},
    "subscribe": {"action": "subscribe", "conversation_id": CONVERSATION, "last_event_id": "0-0"},
    "unsubscribe": {"action": "unsubscribe", "conversation_id": CONVERSATION},
    "message": {
        "action": "message",
        "conversation_id": CONVERSATION,
        "text": "hello",
        "message_id": "0b6c1f4e-8a45-4c8e-9f0d-3a2b1c0d9e8f",
        "mention_agent_ids": [AGENT],
    },
    "bid": {
        "action": "bid",
        "conversation_id": CONVERSATION,
        "agent_id": AGENT,
        "score": 0.5,
        "rationale": "why",
    },
    "cancel": {"action": "cancel", "conversation_id": CONVERSATION, "reason": "enough"},
    # A spoken message (docs/websocket.md, "Voice"): each case opens, feeds or ends one on a
    # connection of its own, so no utterance is left open where another case sends binary frames.
    "utterance_start": {
        "action": "utterance_start",
        "conversation_id": CONVERSATION,
        "format": "pcm",
        "sample_rate": 16_000,
        "message_id": "0b6c1f4e-8a45-4c8e-9f0d-3a2b1c0d9e90",
        "language": "en",
        "mention_agent_ids": [AGENT],
        "speak": True,
    },
    "audio": {"action": "audio", "conversation_id": CONVERSATION, "audio": "AAAAAA=="},
    "utterance_end": {"action": "utterance_end", "conversation_id": CONVERSATION},
    "utterance_cancel": {"action": "utterance_cancel", "conversation_id": CONVERSATION},
}
NUMBER_FIELDS = frozenset({"score", "sample_rate"})
# Fields whose only valid values are JSON true and false: every hostile string is a wrong type.
BOOLEAN_FIELDS = frozenset({"speak"})
LIST_FIELDS = frozenset({"mention_agent_ids"})


@dataclass(frozen=True)
class WsCase:
    """One hostile frame. data: what is sent (text, or bytes sent as a text frame unless `binary`);
    closes: close codes the edge may answer with instead of a frame; refused: no server could take
    it (not JSON, too deep, a wrong type, an unknown action or field), so an error frame must answer;
    handshake: headers of a connection of its own, opened for this frame."""

    action: str
    attack: str
    data: str | bytes
    binary: bool = False
    closes: frozenset[int] = frozenset()
    refused: bool = False
    handshake: tuple[tuple[str, bytes], ...] = ()

    @property
    def id(self) -> str:
        return f"ws {self.action} | {self.attack}"

    def describe(self) -> str:
        shown = self.data[:160]
        more = (
            f"... ({len(self.data)} {'bytes' if isinstance(self.data, bytes) else 'chars'})"
            if len(self.data) > 160
            else ""
        )
        return f"{'binary' if self.binary else 'text'} frame {shown!r}{more}"


def _padded(frame: dict[str, Any], size: int) -> bytes:
    text = encode(frame).encode()
    return text + b" " * (size - len(text))


def _field_cases(action: str, frame: dict[str, Any]) -> list[WsCase]:
    cases: list[WsCase] = []
    for name in (field for field in frame if field != "action"):
        values: dict[str, Any] = HOSTILE_NUMBERS if name in NUMBER_FIELDS else HOSTILE_STRINGS
        for attack, value in values.items():
            hostile = [value] if name in LIST_FIELDS else value
            # A string no field may hold is refused, but the request id (echoed, never stored);
            # so is every score outside 0 to 1 (the smallest float is inside, but it is no sample
            # rate: those are whole numbers).
            refused = name != "request_id" and (attack != "5e-324" or name != "score")
            cases.append(
                WsCase(action, f"{name}={attack}", encode({**frame, name: hostile}), refused=refused)
            )
        wrong_type: Any = "0.5" if name in NUMBER_FIELDS | BOOLEAN_FIELDS else 12
        cases.append(WsCase(action, f"{name}=wrong-type", encode({**frame, name: wrong_type}), refused=True))
        deep = encode({**frame, name: deep_array(FRAME_DEPTH)})
        cases.append(WsCase(action, f"{name}=deep-array-{FRAME_DEPTH}", deep, refused=True))
    if "last_event_id" in frame:
        # Event ids past what a Redis stream id holds (two unsigned 64-bit numbers).
        for attack, event_id in (("ms-2^64", f"{2**64}-0"), ("seq-2^64", f"0-{2**64}"), ("negative", "-1-0")):
            cases.append(
                WsCase(action, f"last_event_id={attack}", encode({**frame, "last_event_id": event_id}))
            )
    # A frame's request id becomes the request id of the calls it makes to the mesh.
    for attack, request_id in (("not-ascii", "\u00ff\u00fe"), ("newline", "a\nb"), ("del", "a\u007fb")):
        cases.append(WsCase(action, f"request_id={attack}", encode({**frame, "request_id": request_id})))
    cases.append(
        WsCase(action, "action=nul-suffixed", encode({**frame, "action": f"{action}\u0000"}), refused=True)
    )
    cases.append(WsCase(action, "unknown-field-with-nul", encode({**frame, "x\u0000": 1}), refused=True))
    cases.append(WsCase(action, "duplicate-action", encode(Pairs((("action", "ping"), *frame.items())))))
    cases.append(
        WsCase(action, "request_id=129-chars", encode({**frame, "request_id": "r" * 129}), refused=True)
    )
    cases.append(WsCase(action, "size=limit", _padded(frame, MAX_FRAME_BYTES)))
    return cases


def ws_cases() -> list[WsCase]:
    """Every hostile frame, in a fixed order."""
    cases = [case for action, frame in FRAMES.items() for case in _field_cases(action, frame)]
    ping = encode(FRAMES["ping"])
    frame_cases = [
        WsCase("frame", f"top-level-deep-array-{FRAME_DEPTH}", encode(deep_array(FRAME_DEPTH)), refused=True),
        WsCase(
            "frame", f"top-level-deep-object-{OBJECT_DEPTH}", deep_object(OBJECT_DEPTH).text, refused=True
        ),
        WsCase("frame", "deep-array-1000", encode({**FRAMES["ping"], "x": deep_array(1_000)}), refused=True),
        WsCase(
            "frame", "size=limit+1", _padded(FRAMES["ping"], MAX_FRAME_BYTES + 1), closes=frozenset({1009})
        ),
        WsCase(
            "frame",
            "invalid-utf8-text",
            b'{"action": "ping", "request_id": "\xff\xfe"}',
            closes=frozenset({1007}),
        ),
        WsCase(
            "frame",
            "overlong-utf8-text",
            b'{"action": "ping", "request_id": "\xc0\xaf"}',
            closes=frozenset({1007}),
        ),
        WsCase(
            "frame",
            "utf8-encoded-surrogate-text",
            b'{"action": "ping", "request_id": "\xed\xa0\x80"}',
            closes=frozenset({1007}),
        ),
        WsCase("frame", "binary", ping.encode(), binary=True, refused=True),
        WsCase("frame", "binary-invalid-utf8", b"\xff\xfe\x00", binary=True, refused=True),
        WsCase("frame", "empty", "", refused=True),
        WsCase("frame", "not-json", "ping", refused=True),
        WsCase("frame", "truncated", ping[: len(ping) // 2], refused=True),
        WsCase("frame", "top-level-array", "[]", refused=True),
        WsCase("frame", "top-level-null", "null", refused=True),
        WsCase("frame", "top-level-NaN", "NaN", refused=True),
        WsCase("frame", "raw-nul", '{"action":"ping"}\u0000', refused=True),
        WsCase("frame", "utf8-bom", "\ufeff" + ping),
        WsCase("frame", "action=unknown", encode({"action": "shutdown"}), refused=True),
        WsCase("frame", "action=deep-array", encode({"action": deep_array(FRAME_DEPTH)}), refused=True),
        WsCase("frame", "no-action", encode({"request_id": "r"}), refused=True),
    ]
    cases += frame_cases
    # The handshake's own headers: its request id and trace context, then a subscribe that makes
    # the connection's first call to the mesh.
    subscribe = encode(FRAMES["subscribe"])
    for attack, header in (
        ("x-request-id=not-latin-text", ("x-request-id", b"\xff\xfe\xfd")),
        ("x-request-id=20k", ("x-request-id", b"r" * 20_000)),
        ("traceparent=garbage", ("traceparent", b"\xff-\xfe")),
        ("traceparent=version-ff", ("traceparent", b"ff-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")),
    ):
        cases.append(WsCase("handshake", attack, subscribe, handshake=(header,)))
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "two WebSocket cases share a name"
    return cases
