"""The constraints of a UsageEvent, checked by hand on the ingest path.

protovalidate interprets the `buf.validate` rules of usage.proto at about 9 µs an event, a fifth of
what one metering process can spend on an event at the ingest rate we want. `accepts` checks the
same rules directly and an order of magnitude faster; protovalidate stays the reference
(tests/metering/test_event_rules.py compares the two over generated valid and invalid events) and
still writes the reason of every event refused, so dead letters name the rules in its words.

One rule comes on top of the proto's, because Postgres would otherwise refuse the whole batch and
the consumer would retry it forever: the time must be a valid protobuf Timestamp (within years
1 to 9999, nanos below a second). The model (the only free-form text stored in a column) must not
hold a NUL character, which Postgres text cannot store: that is the proto's own rule now
(macp.common.v1.storable), checked here like the others.
"""

from __future__ import annotations

import math
import re

from macp.common.v1 import principal_pb2, usage_pb2

from services.runtime.interceptors import violations_message

# The patterns of usage.proto and principal.proto. RE2's `$` is the end of the text only, so each
# is used with fullmatch, never with a trailing `$`, which in Python also matches before a newline.
# The max_len of a field is folded into its pattern where the pattern is ASCII-only (so that
# characters and code points are the same thing).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@|+-]{0,127}").fullmatch
_PROVIDER = re.compile(r"(?:[a-z][a-z0-9_-]{0,63})?").fullmatch
_SCOPE = re.compile(r"[A-Za-z0-9:._/*-]{1,128}").fullmatch
_TOOL_SERVER = re.compile(r"(?:[a-z][a-z0-9-]{0,31})?").fullmatch
_TOOL = re.compile(r"[A-Za-z0-9_.-]{0,128}").fullmatch

_EVENT_TYPES = frozenset(usage_pb2.UsageEventType.values()) - {usage_pb2.USAGE_EVENT_TYPE_UNSPECIFIED}
_ACTOR_TYPES = frozenset(principal_pb2.ActorType.values()) - {0}
MAX_ACTORS = 8
MAX_SCOPES = 64
MAX_MODEL_LEN = 128

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
MAX_NANOS = 999_999_999


def _actor_ok(actor: principal_pb2.Actor) -> bool:
    scopes = actor.scopes
    client_id = actor.client_id
    return (
        actor.type in _ACTOR_TYPES
        and _ID(actor.id) is not None
        and (not client_id or _ID(client_id) is not None)
        and len(scopes) <= MAX_SCOPES
        and all(_SCOPE(scope) is not None for scope in scopes)
        and len(set(scopes)) == len(scopes)
    )


def accepts(event: usage_pb2.UsageEvent) -> bool:
    """True when `event` passes every rule of usage.proto and the two storage rules above."""
    if _UUID(event.event_id) is None or _ID(event.tenant_id) is None or event.type not in _EVENT_TYPES:
        return False
    if not event.HasField("time"):
        return False
    time = event.time
    if not (MIN_SECONDS <= time.seconds <= MAX_SECONDS and 0 <= time.nanos <= MAX_NANOS):
        return False
    user_id, agent_id, conversation_id, turn_id = (
        event.user_id,
        event.agent_id,
        event.conversation_id,
        event.turn_id,
    )
    if (
        (user_id and _ID(user_id) is None)
        or (agent_id and _UUID(agent_id) is None)
        or (conversation_id and _UUID(conversation_id) is None)
        or (turn_id and _UUID(turn_id) is None)
    ):
        return False
    d = event.dimensions
    audio, storage, model = d.audio_seconds, d.storage_mb, d.model
    if (
        d.input_tokens < 0
        or d.output_tokens < 0
        or d.duration_ms < 0
        # NaN fails every comparison, so `x >= 0` also refuses it; `isfinite` refuses infinity.
        or not (audio >= 0 and math.isfinite(audio))
        or not (storage >= 0 and math.isfinite(storage))
        or _PROVIDER(d.provider) is None
        or len(model) > MAX_MODEL_LEN
        or "\x00" in model
        or d.result_bytes < 0
        or _TOOL_SERVER(d.tool_server) is None
        or _TOOL(d.tool) is None
    ):
        return False
    actors = event.actor_chain
    return not actors or (len(actors) <= MAX_ACTORS and all(_actor_ok(a) for a in actors))


def reason(event: usage_pb2.UsageEvent) -> str:
    """Why `accepts(event)` is False: protovalidate's violations, else the storage rule broken."""
    problem = violations_message(event)
    if problem is not None:
        return problem
    time = event.time
    if not (MIN_SECONDS <= time.seconds <= MAX_SECONDS and 0 <= time.nanos <= MAX_NANOS):
        return "time: must be a valid Timestamp between 0001-01-01 and 9999-12-31 (nanos below 1e9)"
    # Only reached if `accepts` and protovalidate disagree: refusing is the safe side.
    return "refused by the metering service's own check of the usage.proto rules"
