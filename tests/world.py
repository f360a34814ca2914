"""The whole mesh for tests that cross every service: token, conversation, agent proxy, metering
and orchestrator (each served in-process, as `serve()` runs them), the local provider server,
the edge under uvicorn, and Envoy's front and mesh listeners in front of them all, on free ports
over the session's real infrastructure (Postgres, Redis, Kafka, S3).

`running_world(service_environ, tmp_path)` yields a `World`: a seeded tenant, its user's tokens for
the edge and for the orchestrator, stubs over Envoy's mesh listener, and helpers to create agents
and conversations through the conversation service. More orchestrator processes can be started
on the same world with `World.another_orchestrator()` (they register with Envoy's cluster by port).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import grpc
import redis.asyncio as aioredis
from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

from services.agent_proxy.service import DEFINITION as AGENT_PROXY
from services.conversation.service import DEFINITION as CONVERSATION
from services.metering.service import DEFINITION as METERING
from services.orchestrator.service import DEFINITION as ORCHESTRATOR
from services.provider_server.behavior import Behavior
from services.provider_server.server import RunningProviderServer, serving
from services.runtime.a2a_remote_sealing import SEALING_KEY as A2A_SEALING_KEY
from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from services.runtime.redis_client import text_of
from services.runtime.server import RunningService, ServiceDefinition
from services.runtime.settings import Env
from services.stack.config import free_port
from services.stack.envoy import Envoy
from services.tool_gateway.service import DEFINITION as TOOL_GATEWAY
from tests.e2e.conftest import _wait_healthy
from tests.edge_and_envoy import edge_and_envoy
from tests.runtime.serving import running
from tests.tokens import Tenant, TokenWorld, bearer, token_world

ORCHESTRATOR_AUDIENCE = service_audience("orchestrator")
CONVERSATION_AUDIENCE = service_audience("conversation")
SERVICES: tuple[tuple[str, ServiceDefinition], ...] = (
    ("CONVERSATION", CONVERSATION),
    ("AGENT_PROXY", AGENT_PROXY),
    ("METERING", METERING),
    ("ORCHESTRATOR", ORCHESTRATOR),
    ("TOOL_GATEWAY", TOOL_GATEWAY),
)
FAST = {
    # Metering's consumer answers quickly (the broker holds a new group's first join for half the
    # session timeout, waiting for more members), the lease lapses soon after its holder dies.
    "MACP_METERING_SESSION_TIMEOUT_MS": "2000",
    "MACP_METERING_HEARTBEAT_INTERVAL_MS": "500",
    "MACP_METERING_POLL_TIMEOUT_MS": "100",
    "MACP_METERING_SWEEP_INTERVAL_SECONDS": "0.5",
    "MACP_ORCHESTRATOR_LEASE_MS": "1500",
    "MACP_ORCHESTRATOR_BID_WINDOW_SECONDS": "1.0",
    "MACP_AGENT_PROXY_RETRY_BASE_SECONDS": "0.01",
}


def provider_environ(base_url: str) -> dict[str, str]:
    """Providers `local` (Anthropic protocol, models echo-1 and echo-2) and `compat` (OpenAI
    protocol, model compat-1), both served by the local provider server at `base_url`."""
    return {
        "MACP_AGENT_PROXY_PROVIDERS": "local,compat",
        "MACP_PROVIDER_LOCAL_BASE_URL": base_url,
        "MACP_PROVIDER_LOCAL_MODELS": "echo-1,echo-2",
        "MACP_PROVIDER_COMPAT_PROTOCOL": "openai",
        "MACP_PROVIDER_COMPAT_BASE_URL": f"{base_url}/v1",
        "MACP_PROVIDER_COMPAT_API_KEY": "sk-compat",
        "MACP_PROVIDER_COMPAT_MODELS": "compat-1",
    }


@dataclass
class World:
    environ: dict[str, str]
    envoy: Envoy
    tokens: TokenWorld
    tenant: Tenant
    provider_server: RunningProviderServer
    edge_token: str
    orchestrator_token: str
    conversation_token: str
    channel: grpc.aio.Channel
    orchestrators: list[RunningService] = field(default_factory=list)

    @property
    def front_url(self) -> str:
        return self.envoy.url

    def metrics_port(self, process: str) -> int:
        """The `/metrics` port of `process` (a registry name: `agent-proxy`, `edge`, ...)."""
        return int(self.environ[f"MACP_{process.upper().replace('-', '_')}_METRICS_PORT"])

    @property
    def orchestrator(self) -> pb_grpc.OrchestratorServiceStub:
        return pb_grpc.OrchestratorServiceStub(self.channel)

    @property
    def conversations(self) -> conversation_grpc.ConversationServiceStub:
        return conversation_grpc.ConversationServiceStub(self.channel)

    @property
    def as_user(self) -> tuple[tuple[str, str], ...]:
        """Metadata of the tenant's user calling the orchestrator."""
        return bearer(self.orchestrator_token)

    async def other_tenant(self) -> World:
        """This world as seen by the user of a new tenant of its own."""
        tenant = await self.tokens.tenant()
        return replace(
            self,
            tenant=tenant,
            edge_token=await self.tokens.user_token(tenant, [EDGE_AUDIENCE]),
            orchestrator_token=await self.tokens.user_token(tenant, [ORCHESTRATOR_AUDIENCE]),
            conversation_token=await self.tokens.user_token(tenant, [CONVERSATION_AUDIENCE]),
        )

    async def set_plan(
        self, tier: principal_pb2.Tier.ValueType, allowances: Sequence[metering_pb.PlanAllowance] = ()
    ) -> None:
        """Put this world's tenant on `tier` (with `allowances`, an enterprise plan's own), as an
        operator would: an internal client holding `macp:admin` calls Metering.SetPlan."""
        harness = self.tokens.harness
        operator = await harness.register(scope="macp:admin")
        token = await harness.client_token(operator, "macp:admin", [service_audience("metering")])
        await metering_grpc.MeteringServiceStub(self.channel).SetPlan(
            metering_pb.SetPlanRequest(tenant_id=self.tenant.tenant_id, tier=tier, allowances=allowances),
            metadata=bearer(token.access_token),
            timeout=10,
        )

    async def tenant_without_turns(self) -> World:
        """A new tenant whose plan includes no agent turns, as a hard limit: each of its turns is
        refused for quota."""
        broke = await self.other_tenant()
        no_turns = metering_pb.PlanAllowance(
            meter=metering_pb.METER_AGENT_TURNS, included_quantity=0, hard_limit=True, overage_block_size=1
        )
        await broke.set_plan(principal_pb2.TIER_ENTERPRISE, [no_turns])
        return broke

    async def agent(
        self, name: str, provider: str = "local", model: str = "echo-1", **fields: object
    ) -> conversation_pb.Agent:
        agent = conversation_pb.Agent(name=name, provider=provider, model=model, **fields)  # type: ignore[arg-type]
        reply = await self.conversations.CreateAgent(
            conversation_pb.CreateAgentRequest(agent=agent),
            metadata=bearer(self.conversation_token),
            timeout=10,
        )
        return reply.agent

    async def conversation(
        self,
        agents: Sequence[conversation_pb.Agent],
        policy: conversation_pb.TurnPolicy.ValueType = conversation_pb.TURN_POLICY_ROUND_ROBIN,
        **fields: object,
    ) -> conversation_pb.Conversation:
        conversation = conversation_pb.Conversation(
            title="test",
            participant_agent_ids=[a.id for a in agents],
            turn_policy=policy,
            **fields,  # type: ignore[arg-type]
        )
        reply = await self.conversations.CreateConversation(
            conversation_pb.CreateConversationRequest(conversation=conversation),
            metadata=bearer(self.conversation_token),
            timeout=10,
        )
        return reply.conversation

    def book(self, behavior: str, times: int | None = None, model: str = "echo-1") -> None:
        """Make the provider server answer `model`'s next `times` requests with `behavior`
        (services/provider_server/behavior.py: `pace=0.05` for a slow stream)."""
        self.provider_server.state.book.book(model, Behavior.parse(behavior), times)

    async def messages(self, conversation_id: str) -> list[conversation_pb.Message]:
        reply = await self.conversations.ListMessages(
            conversation_pb.ListMessagesRequest(conversation_id=conversation_id, page_size=1000),
            metadata=bearer(self.conversation_token),
            timeout=10,
        )
        return list(reply.messages)

    async def post(
        self, conversation_id: str, text: str, message_id: str | None = None
    ) -> pb.PostMessageResponse:
        return await self.orchestrator.PostMessage(
            pb.PostMessageRequest(
                conversation_id=conversation_id,
                message=pb.UserMessage(message_id=message_id or str(uuid.uuid4()), text=text),
            ),
            metadata=self.as_user,
            timeout=10,
        )

    @asynccontextmanager
    async def database(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection to the services' database (the books live there)."""
        connection = await asyncpg.connect(self.environ["MACP_DATABASE_URL"])
        try:
            yield connection
        finally:
            await connection.close()

    async def open_holds(self) -> list[str]:
        """The tenant's quota holds still open in metering (services/metering/quota_counters.py)."""
        redis = aioredis.from_url(self.environ["MACP_REDIS_URL"])
        prefix = self.environ.get("MACP_REDIS_KEY_PREFIX", "")
        try:
            pattern = f"{prefix}metering:{{{self.tenant.tenant_id}}}:hold:*"
            keys = [key async for key in redis.scan_iter(match=pattern)]
            # A settled hold stays a while as committed, released or expired (its retries' answer).
            states = [await redis.hget(key, "state") for key in keys]
            return sorted(text_of(key) for key, state in zip(keys, states, strict=True) if state == b"open")
        finally:
            await redis.aclose()

    async def round_events(
        self, conversation_id: str, after_event_id: str, trigger_message_id: str, seconds: float = 30
    ) -> list[pb.ConversationEvent]:
        """The events after `after_event_id` up to the RoundCompleted of `trigger_message_id`."""
        events: list[pb.ConversationEvent] = []

        async def collect() -> None:
            stream = self.orchestrator.StreamEvents(
                pb.StreamEventsRequest(conversation_id=conversation_id, after_event_id=after_event_id),
                metadata=self.as_user,
            )
            async for response in stream:
                events.append(response.event)
                completed = response.event.round_completed
                if (
                    response.event.HasField("round_completed")
                    and completed.trigger_message_id == trigger_message_id
                ):
                    stream.cancel()
                    return

        await asyncio.wait_for(collect(), seconds)
        return events


@asynccontextmanager
async def running_world(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[World]:
    async with token_world(service_environ) as tokens, serving() as provider_server:
        ports: dict[str, str] = {}
        for name, _definition in SERVICES:
            ports[f"MACP_{name}_PORT"] = str(free_port())
            ports[f"MACP_{name}_METRICS_PORT"] = str(free_port())
        ports |= {
            "MACP_EDGE_PORT": str(free_port()),
            "MACP_EDGE_METRICS_PORT": str(free_port()),
            "MACP_TOOL_GATEWAY_HTTP_PORT": str(free_port()),
            # A browser test fixes the front port beforehand: the issuer, and so the console's
            # redirect URI, is the front listener's own origin.
            "MACP_ENVOY_FRONT_PORT": service_environ.get("MACP_ENVOY_FRONT_PORT") or str(free_port()),
            "MACP_ENVOY_MESH_PORT": str(free_port()),
            "MACP_ENVOY_ADMIN_PORT": str(free_port()),
        }
        environ = {
            # Shared by the conversation service (seals an outside A2A agent's client secret) and
            # the agent proxy (opens it); a test's environ may set its own.
            A2A_SEALING_KEY: secrets.token_urlsafe(32),
            **tokens.environ,
            **FAST,
            **provider_environ(provider_server.base_url),
            **ports,
            "MACP_METERING_CONSUMER_GROUP": f"metering-{service_environ['MACP_KAFKA_USAGE_TOPIC']}",
            "MACP_MESH_ADDRESS": f"127.0.0.1:{ports['MACP_ENVOY_MESH_PORT']}",
        }
        env = Env(environ)
        stack = contextlib.AsyncExitStack()
        async with stack:
            runnings: list[RunningService] = []
            for _name, definition in SERVICES:
                runnings.append(await stack.enter_async_context(running(definition, environ)))
            envoy = await stack.enter_async_context(edge_and_envoy(env, tmp_path))
            mesh = grpc.aio.insecure_channel(envoy.mesh_address)
            try:
                clusters = (
                    "token",
                    "conversation",
                    "agent-proxy",
                    "metering",
                    "orchestrator",
                    "tool-gateway",
                )
                for cluster in (*clusters, "edge"):
                    await _wait_healthy(envoy.ports.admin, cluster)
                tenant = await tokens.tenant()
                world = World(
                    environ=environ,
                    envoy=envoy,
                    tokens=tokens,
                    tenant=tenant,
                    provider_server=provider_server,
                    edge_token=await tokens.user_token(tenant, [EDGE_AUDIENCE]),
                    orchestrator_token=await tokens.user_token(tenant, [ORCHESTRATOR_AUDIENCE]),
                    conversation_token=await tokens.user_token(tenant, [CONVERSATION_AUDIENCE]),
                    channel=mesh,
                    orchestrators=[
                        r for (name, _), r in zip(SERVICES, runnings, strict=True) if name == "ORCHESTRATOR"
                    ],
                )
                await _wait_authenticating(world)
                yield world
            finally:
                await mesh.close()


async def _wait_authenticating(world: World) -> None:
    """Until every service holds the token service's keys: a GET of an unknown agent through the
    mesh answers NOT_FOUND, not UNAVAILABLE (30 s at most)."""
    for _ in range(150):
        try:
            await world.conversations.GetAgent(
                conversation_pb.GetAgentRequest(id=str(uuid.uuid4())),
                metadata=bearer(world.conversation_token),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
        await asyncio.sleep(0.2)
    raise AssertionError("the world never authenticated a valid token")
