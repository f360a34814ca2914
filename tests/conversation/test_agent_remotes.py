"""An agent of provider `a2a` is an outside A2A agent: its remote is required for that provider and
refused for any other (naming `agent.remote`), its client secret is sealed at rest and never read
back, an update without a secret keeps the stored one, and GetAgentRemote hands out the secret
sealed only, bound to its tenant and agent."""

from __future__ import annotations

import secrets
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.runtime.a2a_remote_sealing import SEALING_KEY, associated_data
from services.runtime.sealing import Sealer, SealError, decode_sealing_key
from tests.conversation.conftest import World, refused

SECRET = "remote-" + "s3cr3t" * 5
CARD = "http://127.0.0.1:9/.well-known/agent-card.json"


@pytest.fixture
def service_environ(service_environ: dict[str, str]) -> dict[str, str]:
    return {**service_environ, SEALING_KEY: secrets.token_urlsafe(32)}


def remote_agent(secret: str = SECRET, **grant: str) -> pb.Agent:
    credentials = pb.RemoteClientCredentials(
        token_url="http://127.0.0.1:9/oauth2/token", client_id="macp-at-remote", client_secret=secret
    )
    for name, value in grant.items():
        setattr(credentials, name, value)
    remote = pb.RemoteAgent(
        card_url=CARD, auth=pb.REMOTE_AUTH_CLIENT_CREDENTIALS, client_credentials=credentials
    )
    return pb.Agent(name="Remote", provider="a2a", model="Travel Planner (remote)", remote=remote)


async def stored_row(world: World, agent_id: str) -> asyncpg.Record:
    connection = await asyncpg.connect(world.environ["MACP_DATABASE_URL"])
    try:
        row = await connection.fetchrow(
            "SELECT * FROM conversation_agents WHERE id = $1", uuid.UUID(agent_id)
        )
    finally:
        await connection.close()
    assert row is not None
    return row


async def test_the_secret_is_sealed_at_rest_and_never_read_back(world: World) -> None:
    alice = world.alice
    created = (await alice.stub.CreateAgent(pb.CreateAgentRequest(agent=remote_agent()))).agent
    assert created.model == "Travel Planner (remote)"
    assert created.remote.card_url == CARD
    assert created.remote.client_credentials.client_id == "macp-at-remote"
    got = (await alice.stub.GetAgent(pb.GetAgentRequest(id=created.id))).agent
    listed = (await alice.stub.ListAgents(pb.ListAgentsRequest())).agents
    handed = await alice.stub.GetAgentRemote(pb.GetAgentRemoteRequest(id=created.id))
    for read in (created, got, *listed, handed.agent):
        assert read.remote.client_credentials.client_secret == ""
        assert SECRET.encode() not in read.SerializeToString()
    assert SECRET.encode() not in handed.SerializeToString()

    row = await stored_row(world, created.id)
    assert all(SECRET not in str(value) for key, value in row.items() if key != "sealed_remote_secret")
    sealer = Sealer(decode_sealing_key(world.environ[SEALING_KEY]))
    place = associated_data(alice.tenant_id, created.id)
    assert sealer.open(handed.sealed_client_secret, place) == SECRET.encode()
    with pytest.raises(SealError):  # bound to its agent: another agent's place does not open it
        sealer.open(handed.sealed_client_secret, associated_data(alice.tenant_id, str(uuid.uuid4())))

    # An update that gives no secret keeps the stored one; one that gives a new secret replaces it.
    renamed = pb.Agent(id=created.id, etag=created.etag, remote=remote_agent("", scope="agents:ask").remote)
    updated = (
        await alice.stub.UpdateAgent(
            pb.UpdateAgentRequest(agent=renamed, update_mask=FieldMask(paths=["remote"]))
        )
    ).agent
    assert updated.remote.client_credentials.scope == "agents:ask"
    handed = await alice.stub.GetAgentRemote(pb.GetAgentRemoteRequest(id=created.id))
    assert sealer.open(handed.sealed_client_secret, place) == SECRET.encode()
    changed = pb.Agent(id=created.id, etag=updated.etag, remote=remote_agent("another-secret").remote)
    await alice.stub.UpdateAgent(
        pb.UpdateAgentRequest(agent=changed, update_mask=FieldMask(paths=["remote"]))
    )
    handed = await alice.stub.GetAgentRemote(pb.GetAgentRemoteRequest(id=created.id))
    assert sealer.open(handed.sealed_client_secret, place) == b"another-secret"

    # Another tenant's agent is not found; a local agent has no remote.
    assert (
        await refused(world.bob.stub.GetAgentRemote(pb.GetAgentRemoteRequest(id=created.id)))
    ).code() == grpc.StatusCode.NOT_FOUND
    local = (
        await alice.stub.CreateAgent(
            pb.CreateAgentRequest(agent=pb.Agent(name="L", provider="local", model="echo-1"))
        )
    ).agent
    no_remote = await refused(alice.stub.GetAgentRemote(pb.GetAgentRemoteRequest(id=local.id)))
    assert no_remote.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("agent", "field"),
    [
        (pb.Agent(name="A", provider="a2a", model="Remote"), "agent.remote: required for provider a2a"),
        (
            pb.Agent(name="A", provider="local", model="echo-1", remote=remote_agent().remote),
            "agent.remote: only an agent of provider a2a",
        ),
        (remote_agent(""), "agent.remote.client_credentials.client_secret: value is required"),
        (remote_agent(scope="a  b"), "agent.remote.client_credentials.scope: scope tokens"),
        (pb.Agent(name="A", provider="local", model="echo 1"), "model: a provider's model name"),
        (
            pb.Agent(
                name="A",
                provider="a2a",
                model="R",
                remote=pb.RemoteAgent(card_url="ftp://x/", auth=pb.REMOTE_AUTH_NONE),
            ),
            "agent.remote.card_url",
        ),
        (
            pb.Agent(name="A", provider="a2a", model="R", remote=pb.RemoteAgent(card_url=CARD)),
            "agent.remote.auth",
        ),
        (
            pb.Agent(
                name="A",
                provider="a2a",
                model="R",
                remote=pb.RemoteAgent(card_url=CARD, auth=pb.REMOTE_AUTH_CLIENT_CREDENTIALS),
            ),
            "client_credentials: required for REMOTE_AUTH_CLIENT_CREDENTIALS",
        ),
    ],
)
async def test_a_bad_remote_is_invalid_naming_the_field(world: World, agent: pb.Agent, field: str) -> None:
    refusal = await refused(world.alice.stub.CreateAgent(pb.CreateAgentRequest(agent=agent)))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refusal.details() or ""), refusal.details()


async def test_a_local_agent_cannot_gain_a_remote_by_update(world: World) -> None:
    alice = world.alice
    local = (
        await alice.stub.CreateAgent(
            pb.CreateAgentRequest(agent=pb.Agent(name="L", provider="local", model="echo-1"))
        )
    ).agent
    change = pb.Agent(id=local.id, etag=local.etag, remote=remote_agent().remote)
    refusal = await refused(
        alice.stub.UpdateAgent(pb.UpdateAgentRequest(agent=change, update_mask=FieldMask(paths=["remote"])))
    )
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent.remote: only an agent of provider a2a" in (refusal.details() or "")
