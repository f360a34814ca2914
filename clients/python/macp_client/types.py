"""The REST resources as the edge answers them (its OpenAPI document at `/v1/openapi.json`).

The REST API speaks the proto3 JSON mapping with lowerCamelCase names, every field present at its
default except message-valued ones, which appear when set (`NotRequired` here); 64-bit integers
are strings and timestamps RFC 3339 strings, as the mapping writes them. TypedDicts rather than
classes: an answer is used as it came, and a draft is written as the JSON it becomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, NotRequired, Required, TypeAlias, TypedDict, TypeVar

TurnPolicy: TypeAlias = Literal[
    "TURN_POLICY_ROUND_ROBIN",
    "TURN_POLICY_BID",
    "TURN_POLICY_COORDINATOR",
    "TURN_POLICY_PIPELINE",
    "TURN_POLICY_CHOREOGRAPHY",
]
DoubleTextingPolicy: TypeAlias = Literal[
    "DOUBLE_TEXTING_POLICY_REJECT", "DOUBLE_TEXTING_POLICY_ENQUEUE", "DOUBLE_TEXTING_POLICY_INTERRUPT"
]
ConversationStatus: TypeAlias = Literal[
    "CONVERSATION_STATUS_UNSPECIFIED",
    "CONVERSATION_STATUS_ACTIVE",
    "CONVERSATION_STATUS_ARCHIVED",
]
UsageGrouping: TypeAlias = Literal["agent", "conversation", "model", "event_type"]


class GenerationSettings(TypedDict, total=False):
    maxTokens: int
    temperature: float


class BiddingHints(TypedDict, total=False):
    keywords: list[str]
    eagerness: float
    minScore: float


class _AgentSettings(TypedDict, total=False):
    systemPrompt: str
    generation: GenerationSettings
    capabilities: list[str]
    bidding: BiddingHints
    allowedTools: list[str]


class AgentChanges(_AgentSettings, total=False):
    """The fields a PATCH of an agent changes (a message-valued one is replaced whole)."""

    name: str
    provider: str
    model: str


class AgentDraft(_AgentSettings):
    """A new agent: `name`, `provider` and `model` are required."""

    name: str
    provider: str
    model: str


class Agent(TypedDict):
    id: str
    tenantId: str
    ownerId: str
    name: str
    provider: str
    model: str
    systemPrompt: str
    generation: NotRequired[GenerationSettings]
    capabilities: list[str]
    bidding: NotRequired[BiddingHints]
    etag: str
    createTime: NotRequired[str]
    updateTime: NotRequired[str]
    allowedTools: list[str]


class ConversationLimits(TypedDict, total=False):
    maxAgentTurnsPerUserMessage: int
    maxToolCallsPerTurn: int


class _ConversationSettings(TypedDict, total=False):
    title: str
    coordinatorAgentId: str
    limits: ConversationLimits
    doubleTextingPolicy: DoubleTextingPolicy


class ConversationChanges(_ConversationSettings, total=False):
    """The fields a PATCH of a conversation changes."""

    participantAgentIds: list[str]
    turnPolicy: TurnPolicy


class ConversationDraft(_ConversationSettings):
    """A new conversation: 1 to 16 of the tenant's agents and a turn policy are required
    (`coordinatorAgentId` too under TURN_POLICY_COORDINATOR)."""

    participantAgentIds: list[str]
    turnPolicy: TurnPolicy


class Conversation(TypedDict):
    id: str
    tenantId: str
    ownerId: str
    title: str
    participantAgentIds: list[str]
    turnPolicy: str
    coordinatorAgentId: str
    limits: NotRequired[ConversationLimits]
    doubleTextingPolicy: str
    status: str
    etag: str
    archiveKey: str
    createTime: NotRequired[str]
    updateTime: NotRequired[str]
    archiveTime: NotRequired[str]


class ToolCallRecord(TypedDict):
    toolCallId: str
    name: str
    arguments: NotRequired[dict[str, object]]
    isError: bool
    durationMs: str


class Message(TypedDict):
    id: str
    conversationId: str
    role: str
    authorId: str
    text: str
    turnId: str
    sequence: str
    createTime: NotRequired[str]
    toolCall: NotRequired[ToolCallRecord]


class PostedMessage(TypedDict):
    """The answer of a posted message: `duplicate` for a retry of the same id, `eventId` the
    MessageAccepted event to follow the round after."""

    messageId: str
    sequence: str
    duplicate: bool
    eventId: str


class Archive(TypedDict):
    id: str
    conversationId: str
    tenantId: str
    bucket: str
    objectKey: str
    contentType: str
    sizeBytes: str
    messageCount: str
    lastSequence: str
    sha256: str
    createTime: NotRequired[str]


class ArchiveLink(TypedDict):
    """An archive with a presigned download URL."""

    archive: Archive
    presignedUrl: str
    presignedUrlExpireTime: NotRequired[str]


class ArchiveResult(ArchiveLink):
    """A new archive, and the conversation as it is after it (its new etag)."""

    conversation: Conversation


class UsageTotals(TypedDict):
    agentTurns: str
    orchestrations: str
    voiceSeconds: float
    storageMb: float
    apiCalls: str
    inputTokens: str
    outputTokens: str
    eventCount: str
    estimatedEventCount: str
    toolCalls: str


class UsageGroup(TypedDict):
    key: str
    totals: UsageTotals


class Usage(TypedDict):
    groups: list[UsageGroup]
    totals: NotRequired[UsageTotals]
    nextPageToken: str


class Period(TypedDict, total=False):
    startTime: str
    endTime: str


class InvoiceLineItem(TypedDict):
    meter: str
    description: str
    unit: str
    quantity: str
    includedQuantity: str
    overageQuantity: str
    overagePriceCents: str
    overageBlockSize: str
    amountCents: str


class InvoicePreview(TypedDict):
    tenantId: str
    tier: str
    period: NotRequired[Period]
    lineItems: list[InvoiceLineItem]
    totalCents: str
    currency: str
    final: bool
    generateTime: NotRequired[str]


class ToolServerDraft(TypedDict, total=False):
    """A tenant's MCP server to register (docs/tool-gateway.md has every field)."""

    name: Required[str]
    url: Required[str]
    auth: str
    staticCredential: dict[str, str]
    clientCredentials: dict[str, str]


class TokenResponse(TypedDict):
    """RFC 6749 section 5.1."""

    access_token: str
    token_type: str
    expires_in: int
    refresh_token: NotRequired[str]
    scope: NotRequired[str]


class Introspection(TypedDict, total=False):
    """RFC 7662 section 2.2: only `active` when the token is not."""

    active: Required[bool]
    scope: str
    client_id: str
    username: str
    token_type: str
    exp: int
    iat: int
    nbf: int
    sub: str
    aud: list[str]
    iss: str
    jti: str


Item = TypeVar("Item")


@dataclass(frozen=True)
class Page(Generic[Item]):
    """One page of a list: its items and the token of the next page ("" on the last)."""

    items: list[Item]
    next_page_token: str
