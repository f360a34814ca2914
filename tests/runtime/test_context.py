"""Per-call context variables: a reset from another Context (a cancelled stream's generator closed
by the loop's finalizer) is ignored, not raised as "created in a different Context"."""

from __future__ import annotations

import contextvars
from contextvars import ContextVar

import pytest

from services.runtime.context import reset_quietly

probe: ContextVar[str] = ContextVar("probe", default="unset")


def test_a_reset_in_the_same_context_restores_the_value() -> None:
    token = probe.set("call")
    reset_quietly(probe, token)
    assert probe.get() == "unset"


def test_a_reset_from_another_context_is_ignored_where_a_plain_reset_raises() -> None:
    token = probe.set("call")
    other = contextvars.Context()
    with pytest.raises(ValueError, match="different Context"):
        other.run(probe.reset, token)
    other.run(reset_quietly, probe, token)  # the guarded reset: no error
    assert probe.get() == "call"  # and this Context's value is not another's to undo
    reset_quietly(probe, token)
