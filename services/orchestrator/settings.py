"""The orchestrator's own settings (`MACP_ORCHESTRATOR_*`), each named in its error."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.orchestrator.event_log import DEFAULT_IDLE_SECONDS, DEFAULT_MAX_EVENTS
from services.orchestrator.lease import DEFAULT_LEASE_MS
from services.runtime.sealing import sealing_key
from services.runtime.settings import Env

SEALING_KEY = "MACP_ORCHESTRATOR_SEALING_KEY"


@dataclass(frozen=True)
class OrchestratorSettings:
    # How long a driver's lease lasts unless renewed: the longest a dead driver's round hangs
    # before another process takes it over.
    lease_ms: int
    # The event log's retention: events kept per conversation, and how long an idle log lives.
    max_events: int
    event_idle_seconds: int
    # How long a bidding round waits for bids (agent proxy and clients) before it is decided.
    bid_window_seconds: float
    # The deadline of one agent's Generate (the agent proxy's own 30 s call timeout is inside it).
    turn_timeout_seconds: float
    # The deadline of every unary call to another service.
    rpc_timeout_seconds: float
    # How many stored messages of the conversation an agent sees as its context.
    context_messages: int
    # The agents' turns held per user message when the conversation sets no limit; 0 means one
    # turn per participant.
    default_turn_limit: int
    # How long a reservation is held when its turn's driver dies (metering expires it after this).
    reservation_ttl_seconds: int
    # How long storing an answer and committing or releasing a hold are retried while the service
    # they go to is away (a restart): past it, a turn ends STORE_FAILED or a hold waits its TTL.
    settle_seconds: float
    # How long a quota hold is asked for again while metering is away (a restart) before the turn
    # or round is refused RESERVE_FAILED: nothing is owed yet, and the client is waiting.
    reserve_seconds: float
    # The orchestrator's own client at the token service; registered on first use when unset.
    client_id: str | None
    client_secret: str | None
    initial_access_token: str | None
    # Seals each queued round's bearer token in Redis (round_jobs.py); every orchestrator process
    # of a deployment needs the same one, as any of them may drive any round.
    sealing_key: bytes = field(repr=False)

    @classmethod
    def from_env(cls, env: Env) -> OrchestratorSettings:
        return cls(
            lease_ms=env.integer(
                "MACP_ORCHESTRATOR_LEASE_MS", DEFAULT_LEASE_MS, minimum=300, maximum=600_000
            ),
            max_events=env.integer(
                "MACP_ORCHESTRATOR_MAX_EVENTS", DEFAULT_MAX_EVENTS, minimum=100, maximum=10_000_000
            ),
            event_idle_seconds=env.integer(
                "MACP_ORCHESTRATOR_EVENT_IDLE_SECONDS", DEFAULT_IDLE_SECONDS, minimum=60
            ),
            bid_window_seconds=env.number("MACP_ORCHESTRATOR_BID_WINDOW_SECONDS", 2.0, minimum=0.05),
            turn_timeout_seconds=env.number("MACP_ORCHESTRATOR_TURN_TIMEOUT_SECONDS", 120.0, minimum=1.0),
            rpc_timeout_seconds=env.number("MACP_ORCHESTRATOR_RPC_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            context_messages=env.integer("MACP_ORCHESTRATOR_CONTEXT_MESSAGES", 40, minimum=1, maximum=500),
            default_turn_limit=env.integer("MACP_ORCHESTRATOR_DEFAULT_TURN_LIMIT", 0, minimum=0, maximum=50),
            reservation_ttl_seconds=env.integer(
                "MACP_ORCHESTRATOR_RESERVATION_TTL_SECONDS", 300, minimum=1, maximum=3600
            ),
            settle_seconds=env.number("MACP_ORCHESTRATOR_SETTLE_SECONDS", 60.0, minimum=0.0),
            reserve_seconds=env.number("MACP_ORCHESTRATOR_RESERVE_SECONDS", 10.0, minimum=0.0),
            client_id=env.optional_string("MACP_ORCHESTRATOR_CLIENT_ID"),
            client_secret=env.optional_string("MACP_ORCHESTRATOR_CLIENT_SECRET"),
            initial_access_token=env.optional_string("MACP_TOKEN_INITIAL_ACCESS_TOKEN"),
            sealing_key=sealing_key(env, SEALING_KEY),
        )
