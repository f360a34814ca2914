"""An agent's A2A agent card, made from the agent as the conversation service holds it.

The card names the agent, its one interface (JSON-RPC over HTTP, A2A 1.0, at
`/a2a/agents/{id}` of the origin the card was fetched from, so it holds behind any front), its
skills (one per capability tag; a general "conversation" skill when it has none), streaming, the
usage extension every task carries (services/runtime/a2a_usage.py), and how to get a token: OAuth
2.0 at the issuer's endpoints (RFC 8414 metadata), by client credentials (services and other
agents) or by authorization code with PKCE (people, through the sign-in page). The system
prompt, model settings and tools are the tenant's own and never on the card.
"""

from __future__ import annotations

from a2a.types import a2a_pb2 as a2a
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb

from services.runtime.a2a_usage import USAGE_EXTENSION_URI
from services.runtime.auth.settings import USER_SCOPES

PROTOCOL_VERSION = "1.0"
OAUTH_SCHEME = "macp_oauth2"
TEXT = "text/plain"


def agent_url(origin: str, agent_id: str) -> str:
    return f"{origin}/a2a/agents/{agent_id}"


def agent_card(agent: conversation_pb.Agent, origin: str, issuer: str) -> a2a.AgentCard:
    scopes = {scope: f"MACP scope {scope}" for scope in USER_SCOPES}
    flows = a2a.OAuthFlows(
        client_credentials=a2a.ClientCredentialsOAuthFlow(token_url=f"{issuer}/oauth2/token", scopes=scopes)
    )
    code_flow = a2a.OAuthFlows(
        authorization_code=a2a.AuthorizationCodeOAuthFlow(
            authorization_url=f"{issuer}/oauth2/authorize",
            token_url=f"{issuer}/oauth2/token",
            scopes=scopes,
            pkce_required=True,
        )
    )
    metadata_url = f"{issuer}/.well-known/oauth-authorization-server"
    skills = [
        a2a.AgentSkill(
            id=capability,
            name=capability,
            description=f"{agent.name}: {capability}",
            tags=[capability],
        )
        for capability in agent.capabilities
    ] or [
        a2a.AgentSkill(
            id="conversation",
            name="conversation",
            description=f"Talk with {agent.name}",
            tags=["conversation"],
        )
    ]
    return a2a.AgentCard(
        name=agent.name,
        description=f"{agent.name}, an agent of MACP ({agent.provider} {agent.model})",
        supported_interfaces=[
            a2a.AgentInterface(
                url=agent_url(origin, agent.id), protocol_binding="JSONRPC", protocol_version=PROTOCOL_VERSION
            )
        ],
        provider=a2a.AgentProvider(organization="MACP", url=issuer),
        version=agent.etag or "1",
        capabilities=a2a.AgentCapabilities(
            streaming=True,
            push_notifications=False,
            extensions=[
                a2a.AgentExtension(
                    uri=USAGE_EXTENSION_URI,
                    description=(
                        "Each task's metadata carries its usage under this URI: tokens in and out, "
                        "agent turns, orchestrations and the providers' list cost, in all and per agent"
                    ),
                    required=False,
                )
            ],
        ),
        security_schemes={
            OAUTH_SCHEME: a2a.SecurityScheme(
                oauth2_security_scheme=a2a.OAuth2SecurityScheme(
                    description="client credentials (services, agents)",
                    flows=flows,
                    oauth2_metadata_url=metadata_url,
                )
            ),
            f"{OAUTH_SCHEME}_code": a2a.SecurityScheme(
                oauth2_security_scheme=a2a.OAuth2SecurityScheme(
                    description="authorization code with PKCE (people, through the sign-in page)",
                    flows=code_flow,
                    oauth2_metadata_url=metadata_url,
                )
            ),
        },
        security_requirements=[
            a2a.SecurityRequirement(schemes={OAUTH_SCHEME: a2a.StringList(list=[])}),
            a2a.SecurityRequirement(schemes={f"{OAUTH_SCHEME}_code": a2a.StringList(list=[])}),
        ],
        default_input_modes=[TEXT],
        default_output_modes=[TEXT],
        skills=skills,
    )
