"""The states of a WebSocket connection (services/edge/ws/state.py): the moves the diagram draws,
and no other."""

from __future__ import annotations

import pytest

from services.edge.ws.state import TRANSITIONS, ConnectionState, InvalidTransition, transition

IDLE, FOLLOWING, CLOSING, CLOSED = (
    ConnectionState.IDLE,
    ConnectionState.FOLLOWING,
    ConnectionState.CLOSING,
    ConnectionState.CLOSED,
)


def test_every_state_has_its_moves() -> None:
    assert set(TRANSITIONS) == set(ConnectionState)


@pytest.mark.parametrize(
    ("current", "to"),
    [
        (IDLE, FOLLOWING),
        (FOLLOWING, IDLE),
        (IDLE, CLOSING),
        (FOLLOWING, CLOSING),
        (IDLE, CLOSED),
        (FOLLOWING, CLOSED),
        (CLOSING, CLOSED),
    ],
)
def test_the_drawn_moves_are_allowed(current: ConnectionState, to: ConnectionState) -> None:
    assert transition(current, to) is to


@pytest.mark.parametrize(
    ("current", "to"),
    [
        (CLOSING, IDLE),
        (CLOSING, FOLLOWING),
        (CLOSING, CLOSING),
        (CLOSED, IDLE),
        (CLOSED, CLOSING),
        (CLOSED, CLOSED),
        (IDLE, IDLE),
    ],
)
def test_other_moves_are_bugs(current: ConnectionState, to: ConnectionState) -> None:
    with pytest.raises(InvalidTransition):
        transition(current, to)


def test_only_idle_and_following_are_open() -> None:
    assert {state for state in ConnectionState if state.open} == {IDLE, FOLLOWING}
