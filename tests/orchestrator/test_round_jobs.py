"""A queued round as Redis keeps it: the sender's bearer token only sealed, bound to its round."""

from __future__ import annotations

import secrets

import pytest
from macp.common.v1 import principal_pb2
from macp.orchestrator.v1 import stored_round_pb2

from services.orchestrator.round_jobs import RoundJobCodec
from services.orchestrator.rounds import RoundJob
from services.orchestrator.settings import SEALING_KEY, OrchestratorSettings
from services.runtime.principal import Caller
from services.runtime.sealing import Sealer, SealError
from services.runtime.settings import Env, SettingsError

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl"


def codec() -> RoundJobCodec:
    return RoundJobCodec(Sealer(secrets.token_bytes(32)))


def job(conversation_id: str = "c-1", message_id: str = "m-1") -> RoundJob:
    return RoundJob(
        Caller(TOKEN, principal_pb2.Principal(tenant_id="acme", user_id="ada")),
        conversation_id,
        message_id,
        "hello",
        7,
        ("agent-1",),
        trace_context=(("traceparent", "00-abc-def-01"),),
    )


def test_a_job_round_trips_and_its_stored_form_holds_no_part_of_the_token() -> None:
    jobs = codec()
    stored = jobs.encode(job())
    for part in TOKEN.split("."):
        assert part.encode() not in stored
    assert jobs.decode(stored) == job()


def test_another_key_or_another_round_does_not_open_it() -> None:
    stored = codec().encode(job())
    with pytest.raises(SealError):
        codec().decode(stored)
    jobs = codec()
    moved = stored_round_pb2.StoredRound.FromString(jobs.encode(job()))
    moved.message_id = "m-2"  # a sealed token copied onto another queued message
    with pytest.raises(SealError):
        jobs.decode(moved.SerializeToString())


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, f"{SEALING_KEY} is not set"),
        ("c2hvcnQ", f"{SEALING_KEY} is malformed (decodes to 5 bytes, not 32)"),
        ("not base64!", f"{SEALING_KEY} is malformed (not base64)"),
    ],
)
def test_the_orchestrator_does_not_start_without_a_well_formed_sealing_key(
    value: str | None, error: str
) -> None:
    environ = {} if value is None else {SEALING_KEY: value}
    with pytest.raises(SettingsError, match=error.replace("(", r"\(").replace(")", r"\)")):
        OrchestratorSettings.from_env(Env(environ))
