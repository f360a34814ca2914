"""The hand-written check of UsageEvent against protovalidate, the reference: both must accept
and refuse exactly the same events, over events mutated one field at a time from a valid one (so
that every rule is met alone) and over events drawn with many fields at random."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import protovalidate
import pytest
from macp.common.v1 import principal_pb2, usage_pb2

from services.metering import event_rules
from services.metering.events import MalformedEvent, row_of_event, row_of_record

Event = usage_pb2.UsageEvent
Mutation = Callable[[Event], None]

UUID = str(uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF))
# Values of each kind of field, valid and not, chosen at the edges of each rule.
UUIDS = [UUID, UUID.upper(), "", UUID[:-1], UUID + "0", UUID.replace("-", ""), "{" + UUID + "}",
         UUID + "\n", UUID.replace("0", "g", 1), UUID.replace("-", "_", 1), "\uff11" + UUID[1:]]  # fmt: skip
IDS = ["t-1", "a", "a" * 128, "a" * 129, "", "-a", ".a", "a b", "a\n", "é", "aé", "Z9._:@|+-",
       "a/b", "a\x00", "a$", "0"]  # fmt: skip
PROVIDERS = ["", "openai", "a" * 64, "a" * 65, "Openai", "1a", "a-b_c9", "a\n", "_a", "a.b", "é"]
MODELS = ["", "claude-sonnet-4-5", "x" * 128, "x" * 129, "é" * 128, "é" * 129, "any text at all!",
          "\n", "a\x00b"]  # fmt: skip
COUNTS = [0, 5, -1, 2**63 - 1, -(2**63)]
MEASURES = [0.0, -0.0, 1.5, -1e-300, -1.0, float("nan"), float("inf"), float("-inf"), 1e308]
TOOL_SERVERS = ["", "weather", "a" * 32, "a" * 33, "a-1", "1a", "-a", "Weather", "a_b", "a\n", "é"]
TOOLS = ["", "forecast", "A.b_c-9", "x" * 128, "x" * 129, "a b", "a/b", "a\n", "é", "a\x00"]
EVENT_TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, -1, 99]
ACTOR_TYPES = [0, 1, 2, 3, 4, 5, -3]
SCOPES = ["usage:read", "a" * 128, "a" * 129, "", "a b", "*", "x/y.z-w:_", "é", "a\n"]


def valid_event() -> Event:
    event = Event(
        event_id=UUID,
        tenant_id="t-1",
        user_id="u-1",
        agent_id=UUID,
        conversation_id=UUID,
        turn_id=UUID,
        type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
        dimensions=usage_pb2.UsageDimensions(
            input_tokens=3, output_tokens=4, duration_ms=5, audio_seconds=1.0, provider="local", model="m"
        ),
    )
    event.time.FromDatetime(datetime(2026, 12, 1, tzinfo=UTC))
    event.actor_chain.add(type=principal_pb2.ACTOR_TYPE_USER, id="u-1", client_id="c-1", scopes=["a", "b"])
    return event


def setter(path: str, value: object) -> Mutation:
    def mutate(event: Event) -> None:
        *parents, name = path.split(".")
        target = event
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return mutate


def actors(count: int) -> Mutation:
    def mutate(event: Event) -> None:
        del event.actor_chain[:]
        for i in range(count):
            event.actor_chain.add(type=principal_pb2.ACTOR_TYPE_AGENT, id=f"a-{i}")

    return mutate


def first_actor(event: Event) -> principal_pb2.Actor:
    if not event.actor_chain:
        event.actor_chain.add(type=principal_pb2.ACTOR_TYPE_SERVICE, id="orchestrator")
    return event.actor_chain[0]


def actor_field(name: str, value: object) -> Mutation:
    def mutate(event: Event) -> None:
        setattr(first_actor(event), name, value)

    return mutate


def actor_scopes(scopes: list[str]) -> Mutation:
    def mutate(event: Event) -> None:
        actor = first_actor(event)
        del actor.scopes[:]
        actor.scopes.extend(scopes)

    return mutate


def clear(field: Literal["time", "dimensions", "actor_chain"]) -> Mutation:
    def mutate(event: Event) -> None:
        event.ClearField(field)

    return mutate


def mutations() -> list[Mutation]:
    found: list[Mutation] = [clear("time"), clear("dimensions"), clear("actor_chain")]
    for field in ("event_id", "agent_id", "conversation_id", "turn_id"):
        found += [setter(field, v) for v in UUIDS]
    for field in ("tenant_id", "user_id"):
        found += [setter(field, v) for v in IDS]
    found += [setter("type", v) for v in EVENT_TYPES]
    for field in ("input_tokens", "output_tokens", "duration_ms", "result_bytes"):
        found += [setter(f"dimensions.{field}", v) for v in COUNTS]
    for field in ("audio_seconds", "storage_mb"):
        found += [setter(f"dimensions.{field}", v) for v in MEASURES]
    found += [setter("dimensions.provider", v) for v in PROVIDERS]
    found += [setter("dimensions.model", v) for v in MODELS]
    found += [setter("dimensions.tool_server", v) for v in TOOL_SERVERS]
    found += [setter("dimensions.tool", v) for v in TOOLS]
    found += [setter("dimensions.estimated", True)]
    found += [actors(n) for n in (0, 1, 8, 9)]
    found += [actor_field("type", v) for v in ACTOR_TYPES]
    found += [actor_field("id", v) for v in IDS]
    found += [actor_field("client_id", v) for v in IDS]
    found += [actor_scopes(s) for s in ([], ["a", "a"], ["a"] * 65, [f"s{i}" for i in range(64)])]
    found += [actor_scopes(["ok", v]) for v in SCOPES]
    return found


def protovalidate_accepts(event: Event) -> bool:
    return not protovalidate.collect_violations(event)


def test_every_single_mutation_is_judged_as_protovalidate_judges_it() -> None:
    assert protovalidate_accepts(valid_event())
    assert event_rules.accepts(valid_event())
    verdicts = []
    for mutate in mutations():
        event = valid_event()
        mutate(event)
        expected = protovalidate_accepts(event)
        assert event_rules.accepts(event) == expected, event
        verdicts.append(expected)
    # Both sides are exercised, many times over.
    assert verdicts.count(True) > 50
    assert verdicts.count(False) > 80


def test_events_with_many_fields_drawn_at_random_are_judged_alike() -> None:
    rng = random.Random(20261201)
    every = mutations()
    accepted = refused = 0
    for _ in range(5_000):
        event = valid_event()
        for mutate in rng.sample(every, rng.randint(1, 6)):
            mutate(event)
        expected = protovalidate_accepts(event)
        assert event_rules.accepts(event) == expected, event
        accepted, refused = accepted + expected, refused + (not expected)
    assert accepted > 200
    assert refused > 2_000


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (event_rules.MIN_SECONDS - 1, 0),
        (event_rules.MAX_SECONDS + 1, 0),
        (0, -1),
        (0, 1_000_000_000),
    ],
)
def test_a_time_outside_the_timestamp_range_is_refused_though_protovalidate_allows_it(
    seconds: int, nanos: int
) -> None:
    event = valid_event()
    event.time.seconds, event.time.nanos = seconds, nanos
    assert protovalidate_accepts(event)
    assert not event_rules.accepts(event)
    with pytest.raises(MalformedEvent, match=r"^invalid UsageEvent: time: must be a valid Timestamp"):
        row_of_event(event)


def test_a_nul_in_the_model_is_refused_since_postgres_text_cannot_hold_it() -> None:
    event = valid_event()
    event.dimensions.model = "a\x00b"
    assert not protovalidate_accepts(event)
    assert not event_rules.accepts(event)
    with pytest.raises(
        MalformedEvent, match=r"^invalid UsageEvent: dimensions\.model: must not contain NUL \(U\+0000\)$"
    ):
        row_of_record(event.SerializeToString())


def test_a_refused_event_carries_protovalidate_s_reason() -> None:
    event = valid_event()
    event.event_id = "nope"
    event.dimensions.audio_seconds = float("nan")
    with pytest.raises(MalformedEvent) as refused:
        row_of_record(event.SerializeToString())
    assert str(refused.value) == (
        "invalid UsageEvent: event_id: must be a valid UUID; dimensions.audio_seconds: must be greater than"
        " or equal to 0; dimensions.audio_seconds: must be finite"
    )


def test_the_extreme_valid_times_are_accepted() -> None:
    for seconds, nanos in ((event_rules.MIN_SECONDS, 0), (event_rules.MAX_SECONDS, 999_999_999)):
        event = valid_event()
        event.time.seconds, event.time.nanos = seconds, nanos
        assert event_rules.accepts(event)
