"""Every event of the SSE streams names its conversation, has its log id and carries its time: the
POSTed message's MessageAccepted comes from the log (a retry's says `duplicate`), and the id just
before an event, which the POST stream resumes from, is computed exactly. uvicorn serving the
edge, httpx streaming, the fake orchestrator behind it and the session's real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from services.edge.events import preceding_event_id
from services.stack.infra import Infrastructure
from tests.edge.orchestrator_world import EdgeWorld, edge_world
from tests.edge.test_sse import SSE, Sse, collect


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


def assert_identified(event: Sse, conversation_id: str) -> None:
    assert event.id, event
    assert event.id == event.data["event_id"], event
    assert event.data["conversation_id"] == conversation_id, event
    datetime.fromisoformat(event.data["time"].replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("event_id", "before"),
    [
        ("1733091112345-3", "1733091112345-2"),
        ("1733091112345-0", "1733091112344-18446744073709551615"),
        ("0-1", "0-0"),
        ("5-18446744073709551615", "5-18446744073709551614"),
    ],
)
def test_the_id_before_an_event_is_the_largest_smaller_one(event_id: str, before: str) -> None:
    assert preceding_event_id(event_id) == before


@pytest.mark.parametrize("event_id", ["", "0-0", "12", "a-1", "1-2-3", "1-18446744073709551616", " 1-0"])
def test_an_id_that_is_no_log_id_is_refused_by_name(event_id: str) -> None:
    with pytest.raises(ValueError, match="event_id"):
        preceding_event_id(event_id)


@pytest.mark.integration
async def test_a_posted_message_stream_carries_each_events_conversation_id_and_time(
    world: EdgeWorld,
) -> None:
    conversation, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    url = f"/v1/conversations/{conversation}/messages"
    body = {"id": message_id, "text": "stream me"}
    async with world.client() as client:
        async with client.stream("POST", url, json=body, headers=SSE) as response:
            assert response.status_code == 200
            first = await collect(response)
        async with client.stream("POST", url, json=body, headers=SSE) as response:
            assert response.status_code == 200
            retried = await collect(response)
    assert first[0].event == "message_accepted"
    for event in first + retried:
        assert_identified(event, conversation)
    logged = world.orchestrator.log(conversation).events[0]
    assert first[0].id == logged.event_id
    assert first[0].data["time"] == logged.time.ToJsonString()
    assert first[0].data["message_accepted"]["duplicate"] is False
    # The retry opens with the same event, saying that this POST was a retry; the round it
    # replays is the first POST's, event for event.
    assert retried[0].data == {
        **first[0].data,
        "message_accepted": {**first[0].data["message_accepted"], "duplicate": True},
    }
    assert [event.data for event in retried[1:]] == [event.data for event in first[1:]]
