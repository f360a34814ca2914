"""The one service registry: every process, port and gRPC route of the mesh, written down once.

`macp up`, the Envoy configuration builder and the compose checks all read this table, so a
service's name, ports and routes are never spelled twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceSpec:
    """One MACP service process.

    name: the process and Envoy cluster name (also the compose service name).
    grpc_services: fully qualified gRPC service names it serves; Envoy's mesh listener routes
        `/<grpc_service>/` prefixes to this service's cluster.
    port: the gRPC port it listens on (plaintext h2c, reached only through Envoy's mesh listener).
    metrics_port: the HTTP port of its Prometheus `/metrics` endpoint.
    module: the Python module whose `main()` runs it (`python -m services.<name>`).
    streaming_rpcs: RPC names that stream; Envoy leaves these routes untimed.
    retry_safe_rpcs: RPC names that are safe to retry on UNAVAILABLE (reads and idempotent writes).
    dependencies: the infrastructure it connects to (postgres, redis, kafka, s3).
    http_port: the port of an HTTP face it serves beside gRPC to outside clients (the tool
        gateway's MCP endpoint), or None; `<prefix>HTTP_PORT` moves it.
    front_paths: the exact paths of Envoy's front listener routed to that HTTP port instead of the
        edge.
    needs: the services it calls through the mesh for its own RPCs; it reports SERVING only while
        each of them answers SERVING there (services/runtime/readiness.py). The graph has no cycle:
        the token service needs none, so readiness spreads outwards from it.
    """

    name: str
    grpc_services: tuple[str, ...]
    port: int
    metrics_port: int
    module: str
    streaming_rpcs: tuple[str, ...] = ()
    retry_safe_rpcs: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = field(default=())
    needs: tuple[str, ...] = field(default=())
    http_port: int | None = None
    front_paths: tuple[str, ...] = ()

    @property
    def env_prefix(self) -> str:
        """Prefix of this service's own settings (`MACP_CONVERSATION_PORT`, ...)."""
        return f"MACP_{self.name.upper().replace('-', '_')}_"

    @property
    def http_port_variable(self) -> str:
        return f"{self.env_prefix}HTTP_PORT"

    @property
    def http_name(self) -> str:
        """The Envoy cluster (and port claim) name of its HTTP face."""
        return f"{self.name}-http"


@dataclass(frozen=True)
class EdgeSpec:
    """The edge: the one HTTP process (REST, WebSocket, SSE) behind Envoy's front listener.

    needs: the services that must answer SERVING through the mesh before the edge is ready
        (services/edge/readiness.py): those nearly every request reaches. Metering is left out:
        only the usage routes call it, and its outage must not refuse every other request.
    """

    name: str
    port: int
    metrics_port: int
    module: str
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderServerSpec:
    """The local provider server: an HTTP stand-in for Anthropic and OpenAI that `macp up` runs
    when no provider key is configured (services/provider_server)."""

    name: str
    port: int
    module: str


@dataclass(frozen=True)
class EnvoySpec:
    """Envoy's listeners: the front one (HTTP/1.1 + WebSocket to the edge) and the mesh one (h2c)."""

    front_port: int
    mesh_port: int
    admin_port: int


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        name="orchestrator",
        grpc_services=("macp.orchestrator.v1.OrchestratorService",),
        port=15051,
        metrics_port=9101,
        module="services.orchestrator",
        streaming_rpcs=("Complete", "Converse", "Speak", "StreamEvents", "Transcribe"),
        dependencies=("redis", "kafka"),
        # A turn reads the conversation, holds quota, delegates a token and generates.
        needs=("conversation", "agent-proxy", "metering", "token"),
    ),
    ServiceSpec(
        name="conversation",
        grpc_services=("macp.conversation.v1.ConversationService", "macp.conversation.v1.WebhookService"),
        port=15052,
        metrics_port=9102,
        module="services.conversation",
        retry_safe_rpcs=(
            "GetAgent",
            "GetAgentRemote",
            "ListAgents",
            "GetConversation",
            "ListConversations",
            "ListMessages",
            "AppendMessage",
            "GetWebhookSubscription",
            "ListWebhookSubscriptions",
            "ListWebhookDeliveries",
            "ListDeliveryTargets",
            # Idempotent: a repeated report of one attempt changes nothing.
            "RecordDeliveryAttempt",
        ),
        dependencies=("postgres", "redis", "s3"),
    ),
    ServiceSpec(
        name="agent-proxy",
        grpc_services=("macp.agent_proxy.v1.AgentProxyService",),
        port=15053,
        metrics_port=9103,
        module="services.agent_proxy",
        streaming_rpcs=("Generate", "Synthesize", "Transcribe"),
        retry_safe_rpcs=("ListProviders", "Bid"),
        dependencies=("redis", "kafka"),
        # No `needs`: only an outside A2A agent's turn calls the conversation and token services
        # (its remote, an exchanged token), and their outage must not take every model turn out
        # of rotation; that turn fails alone, naming them, and counts against its breaker.
    ),
    ServiceSpec(
        name="token",
        grpc_services=("macp.token.v1.TokenService",),
        port=15054,
        metrics_port=9104,
        module="services.token",
        retry_safe_rpcs=("GetJwks", "Introspect"),
        dependencies=("postgres", "redis"),
    ),
    ServiceSpec(
        name="metering",
        grpc_services=("macp.metering.v1.MeteringService",),
        port=15055,
        metrics_port=9105,
        module="services.metering",
        retry_safe_rpcs=("CheckQuota", "GetUsage", "GetInvoicePreview"),
        dependencies=("postgres", "redis", "kafka"),
    ),
    ServiceSpec(
        name="tool-gateway",
        grpc_services=("macp.tool_gateway.v1.ToolGatewayService",),
        port=15056,
        metrics_port=9107,
        module="services.tool_gateway",
        retry_safe_rpcs=("GetToolServer", "ListToolServers", "ListTools"),
        # Redis: tool calls' rate limits and the usage outbox; Kafka: the usage topic.
        dependencies=("postgres", "redis", "kafka"),
        # Upstream tokens are exchanged at the token service; an agent's allowed tools are read
        # from the conversation service; every call holds quota at metering.
        needs=("token", "conversation", "metering"),
        # MCP clients reach the gateway itself at /mcp (Streamable HTTP, OAuth-protected), and
        # its RFC 9728 metadata beside it.
        http_port=8110,
        front_paths=("/mcp", "/.well-known/oauth-protected-resource/mcp"),
    ),
)

EDGE = EdgeSpec(
    name="edge",
    port=8000,
    metrics_port=9106,
    module="services.edge",
    needs=("orchestrator", "conversation", "token"),
)

PROVIDER_SERVER = ProviderServerSpec(name="provider-server", port=8100, module="services.provider_server")


@dataclass(frozen=True)
class ExampleToolServerSpec:
    """An example MCP server `macp up` runs for the tool gateway to reach (services/example_tools):
    `python -m services.example_tools <server> --port <port>`, its MCP endpoint at /mcp."""

    name: str
    server: str
    port: int
    module: str = "services.example_tools"

    @property
    def port_variable(self) -> str:
        return f"MACP_{self.name.upper().replace('-', '_')}_PORT"


EXAMPLE_TOOL_SERVERS = (
    ExampleToolServerSpec(name="example-weather", server="weather", port=8101),
    ExampleToolServerSpec(name="example-calculator", server="calculator", port=8102),
)

# The gRPC health name every service answers SERVING for as long as its process serves at all,
# whatever its readiness (the overall "" status, which follows its stores and needed services). An
# orchestrator's liveness probe asks this one, so a store outage takes pods out of rotation and
# never restarts them (docs/deploy.md).
LIVENESS_HEALTH_SERVICE = "liveness"

ENVOY = EnvoySpec(front_port=8080, mesh_port=9000, admin_port=9901)


def service(name: str) -> ServiceSpec:
    """The spec of the service called `name`; KeyError names the known ones."""
    for spec in SERVICES:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in SERVICES)
    raise KeyError(f"no service named {name!r}; known services: {known}")
