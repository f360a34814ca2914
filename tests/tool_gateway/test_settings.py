"""The gateway's session settings: read from the environment, and a bad value refused naming the
variable and what it takes."""

from __future__ import annotations

import pytest

from services.runtime.settings import Env, SettingsError
from services.tool_gateway.sessions import SessionLimits
from services.tool_gateway.settings import MAX_SESSIONS, SESSION_IDLE_SECONDS, ToolGatewaySettings


def test_session_settings_have_defaults_and_are_read() -> None:
    assert ToolGatewaySettings.from_env(Env({})).sessions == SessionLimits(256, 60.0)
    environ = {MAX_SESSIONS: "8", SESSION_IDLE_SECONDS: "2.5"}
    assert ToolGatewaySettings.from_env(Env(environ)).sessions == SessionLimits(8, 2.5)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        (MAX_SESSIONS, "0", "a whole number from 1 to 100000"),
        (MAX_SESSIONS, "many", "a whole number from 1 to 100000"),
        (SESSION_IDLE_SECONDS, "0", "a number of at least 0.1"),
        (SESSION_IDLE_SECONDS, "soon", "a number of at least 0.1"),
    ],
)
def test_a_bad_session_setting_names_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        ToolGatewaySettings.from_env(Env({name: value}))
    assert str(refused.value).startswith(f"{name}={value!r} is malformed")
    assert says in str(refused.value)
