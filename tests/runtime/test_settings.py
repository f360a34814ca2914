"""Settings: a missing or malformed value names the variable and the fix, in one line."""

from __future__ import annotations

import pytest

from services.runtime.registry import service
from services.runtime.settings import (
    CommonSettings,
    Env,
    KafkaSettings,
    PostgresSettings,
    ServerSettings,
    SettingsError,
)


def test_defaults_apply_when_unset() -> None:
    common = CommonSettings.from_env(Env({}))
    assert common.bind_host == "127.0.0.1"
    assert common.log_level == "info"
    assert common.mesh_address == "127.0.0.1:9000"


def test_server_ports_default_to_the_registry_and_can_be_overridden() -> None:
    spec = service("conversation")
    assert ServerSettings.from_env(Env({}), spec).port == spec.port
    overridden = ServerSettings.from_env(Env({"MACP_CONVERSATION_PORT": "6000"}), spec)
    assert overridden.port == 6000


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"MACP_LOG_LEVEL": "loud"}, "MACP_LOG_LEVEL"),
        ({"MACP_SHUTDOWN_GRACE_SECONDS": "soon"}, "MACP_SHUTDOWN_GRACE_SECONDS"),
        ({"MACP_MESH_ADDRESS": "no-port"}, "MACP_MESH_ADDRESS"),
    ],
)
def test_malformed_common_setting_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        CommonSettings.from_env(Env(environ))
    message = str(caught.value)
    assert message.startswith(variable)
    assert "\n" not in message
    assert "set it to" in message


def test_port_out_of_range_is_refused() -> None:
    with pytest.raises(
        SettingsError, match=r"^MACP_AGENT_PROXY_PORT='70000' is malformed \(outside 0\.\.65535\)"
    ):
        ServerSettings.from_env(Env({"MACP_AGENT_PROXY_PORT": "70000"}), service("agent-proxy"))


def test_missing_required_url_names_the_variable_and_an_example() -> None:
    with pytest.raises(
        SettingsError, match=r"^MACP_DATABASE_URL is not set; set it to a URL such as postgresql://"
    ):
        PostgresSettings.from_env(Env({}))


def test_url_with_wrong_scheme_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^MACP_DATABASE_URL='mysql://x/y' is malformed"):
        PostgresSettings.from_env(Env({"MACP_DATABASE_URL": "mysql://x/y"}))


def test_kafka_bootstrap_accepts_a_list_of_addresses() -> None:
    settings = KafkaSettings.from_env(Env({"MACP_KAFKA_BOOTSTRAP": "a:9092, b:9093"}))
    assert settings.bootstrap_servers == "a:9092, b:9093"
    with pytest.raises(SettingsError, match="MACP_KAFKA_BOOTSTRAP"):
        KafkaSettings.from_env(Env({"MACP_KAFKA_BOOTSTRAP": "a:9092,b"}))


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN"])
def test_a_number_setting_refuses_what_is_not_a_finite_number(text: str) -> None:
    with pytest.raises(SettingsError, match=r"^MACP_X=.* is malformed \(not a finite number\)"):
        Env({"MACP_X": text}).number("MACP_X", 1.0)
