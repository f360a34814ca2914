// The room's state, built from stored messages (REST, paged) and live events (WebSocket): one entry
// per message or turn, keyed so that a turn streamed live and later stored is one entry, not two,
// whichever of the two arrives first (the room subscribes before it reads the history, so a
// message stored meanwhile comes both ways).

import type { ServerEvent } from "./socket";

export interface Entry {
  key: string; // the message id once known, else `turn:<turn id>`
  turnId: string | null;
  messageId: string | null;
  role: "user" | "agent" | "system" | "tool";
  authorId: string;
  text: string;
  state: "stored" | "streaming" | "completed" | "truncated" | "cancelled" | "failed";
  sequence: number; // stored order; live entries sort after every stored one
  time: string;
  refusal?: string; // an own message the platform refused (state "failed"): why, in words
}

export interface BidBar {
  agentId: string;
  score: number | null; // null: asked, no bid yet
  declined: boolean;
  winner: boolean;
}

export interface Note {
  id: string;
  tone: "info" | "error";
  text: string;
}

export interface RoomState {
  entries: Entry[];
  bids: { turnId: string; bars: BidBar[] } | null;
  activeTurns: string[];
  notes: Note[];
}

export const EMPTY_ROOM: RoomState = { entries: [], bids: null, activeTurns: [], notes: [] };
const LIVE_SEQUENCE = Number.MAX_SAFE_INTEGER / 2;
const MAX_NOTES = 30;

type Names = (agentId: string) => string;
type Payload = Record<string, unknown>;

function text(value: unknown): string {
  return typeof value === "string" ? value : "";
}

function outcome(value: unknown): Entry["state"] {
  switch (value) {
    case "TURN_OUTCOME_TRUNCATED":
      return "truncated";
    case "TURN_OUTCOME_CANCELLED":
      return "cancelled";
    case "TURN_OUTCOME_COMPLETED":
      return "completed";
    default:
      return "failed";
  }
}

function note(state: RoomState, id: string, tone: Note["tone"], words: string): RoomState {
  return { ...state, notes: [...state.notes, { id, tone, text: words }].slice(-MAX_NOTES) };
}

function upsertTurn(state: RoomState, turnId: string, change: (entry: Entry) => Entry, agentId: string, time: string): RoomState {
  const index = state.entries.findIndex((entry) => entry.turnId === turnId);
  if (index >= 0) {
    const entries = state.entries.slice();
    entries[index] = change(entries[index] as Entry);
    return { ...state, entries };
  }
  const fresh: Entry = { key: `turn:${turnId}`, turnId, messageId: null, role: "agent", authorId: agentId, text: "", state: "streaming", sequence: LIVE_SEQUENCE + state.entries.length, time };
  return { ...state, entries: [...state.entries, change(fresh)] };
}

/** What the errors the platform reports mean, in words. */
export function errorWords(reason: string, message: string, retryAfter?: string | number): string {
  // The server's own message may already say how long to wait; it is not said twice.
  const wait = retryAfter && !/retry after/i.test(message) ? ` Try again in ${String(retryAfter).replace(/s$/, "")} s.` : "";
  switch (reason) {
    case "QUOTA_EXCEEDED":
    case "RESOURCE_EXHAUSTED":
    case "QUOTA_REFUSED":
      return `Quota refused: ${message || "the plan's quota is used up"}.${wait}`;
    case "RATE_LIMITED":
      return `Rate limited: ${message || "too many requests"}.${wait}`;
    default:
      return `${reason ? `${reason.toLowerCase().replace(/_/g, " ")}: ` : ""}${message || "something went wrong"}.${wait}`;
  }
}

export function applyEvent(state: RoomState, frame: ServerEvent, names: Names): RoomState {
  const payload = (frame.event[frame.kind] ?? {}) as Payload;
  const time = frame.event.time ?? "";
  const id = frame.event_id;
  switch (frame.kind) {
    case "message_accepted": {
      const messageId = text(payload["message_id"]);
      const position = Number(payload["queue_position"] ?? 0);
      const queued = position > 0 ? ` It waits in line (position ${position}).` : "";
      const words = payload["duplicate"] ? "The message was already stored (sent twice)." : `Message accepted.${queued}`;
      return note(markStored(state, messageId), id, "info", words);
    }
    case "bidding_opened": {
      const agents = (payload["agent_ids"] as string[] | undefined) ?? [];
      const bars = agents.map((agentId) => ({ agentId, score: null, declined: false, winner: false }));
      return note({ ...state, bids: { turnId: text(payload["turn_id"]), bars } }, id, "info", `Bidding opened: ${agents.map(names).join(", ")} may bid.`);
    }
    case "bid_results": {
      const bids = (payload["bids"] as Payload[] | undefined) ?? [];
      const winner = text(payload["winner_agent_id"]);
      const bars: BidBar[] = bids.map((bid) => ({ agentId: text(bid["agent_id"]), score: Number(bid["score"] ?? 0), declined: Boolean(bid["declined"]), winner: text(bid["agent_id"]) === winner }));
      const words = winner ? `${names(winner)} won the bid.` : "No agent bid.";
      return note({ ...state, bids: { turnId: text(payload["turn_id"]), bars } }, id, "info", words);
    }
    case "turn_started": {
      const turnId = text(payload["turn_id"]);
      const agentId = text(payload["agent_id"]);
      const started = upsertTurn(state, turnId, (entry) => ({ ...entry, state: "streaming" }), agentId, time);
      return note({ ...started, activeTurns: [...state.activeTurns.filter((t) => t !== turnId), turnId] }, id, "info", `${names(agentId)} started answering.`);
    }
    case "token_delta": {
      const turnId = text(payload["turn_id"]);
      return upsertTurn(state, turnId, (entry) => ({ ...entry, text: entry.text + text(payload["text"]) }), text(payload["agent_id"]), time);
    }
    case "turn_completed": {
      const turnId = text(payload["turn_id"]);
      const agentId = text(payload["agent_id"]);
      const ended = outcome(payload["outcome"]);
      const messageId = text(payload["message_id"]) || null;
      const finalText = text(payload["text"]);
      const done = upsertTurn(
        state,
        turnId,
        (entry) => ({ ...entry, state: ended, messageId, key: messageId ?? entry.key, text: finalText || entry.text }),
        agentId,
        time,
      );
      // A stored copy of the same message (paged in meanwhile) gives way to the live one, which
      // takes its place in the stored order.
      const stored = messageId ? done.entries.find((entry) => entry.turnId !== turnId && entry.messageId === messageId) : undefined;
      const entries = stored ? done.entries.filter((entry) => entry !== stored).map((entry) => (entry.turnId === turnId ? { ...entry, sequence: stored.sequence } : entry)).sort((a, b) => a.sequence - b.sequence) : done.entries;
      return note({ ...done, entries, activeTurns: state.activeTurns.filter((t) => t !== turnId) }, id, "info", `${names(agentId)} finished (${ended}).`);
    }
    case "usage": {
      const dims = (payload["dimensions"] as Payload | undefined) ?? {};
      const agentId = text(payload["agent_id"]);
      const input = Number(dims["input_tokens"] ?? 0);
      const output = Number(dims["output_tokens"] ?? 0);
      if (!input && !output) return state;
      return note(state, id, "info", `${agentId ? names(agentId) : "The round"} used ${input.toLocaleString("en")} input and ${output.toLocaleString("en")} output tokens.`);
    }
    case "error": {
      const detail = (payload["detail"] as Payload | undefined) ?? {};
      const words = errorWords(text(detail["reason"]), text(detail["message"]), text(detail["retry_after"]));
      const turnId = text(payload["turn_id"]);
      const failed = turnId ? { ...state, activeTurns: state.activeTurns.filter((t) => t !== turnId) } : state;
      return note(failed, id, "error", payload["fatal"] ? `${words} The conversation's stream stopped.` : words);
    }
    case "round_completed": {
      const reason = text(payload["reason"]).replace("ROUND_END_REASON_", "").toLowerCase().replace(/_/g, " ");
      return note({ ...state, activeTurns: [] }, id, "info", `Round over (${reason || "completed"}) after ${Number(payload["turn_count"] ?? 0)} turns.`);
    }
    case "tool_call_started":
      return note(state, id, "info", `${names(text(payload["agent_id"]))} calls the tool ${text(payload["name"])}.`);
    case "tool_call_completed":
      return note(state, id, payload["is_error"] ? "error" : "info", `The tool ${text(payload["name"])} ${payload["is_error"] ? "failed" : "answered"}.`);
    default:
      return state;
  }
}

function markStored(state: RoomState, messageId: string): RoomState {
  return {
    ...state,
    entries: state.entries.map((entry) => (entry.messageId === messageId && entry.state === "streaming" ? { ...entry, state: "stored" } : entry)),
  };
}

export interface StoredMessage {
  id?: string;
  role?: string;
  authorId?: string;
  text?: string;
  turnId?: string;
  sequence?: string;
  createTime?: string;
}

/** Stored messages (any page, any order) merged in: one entry per message id, in stored order. A
 * message already shown from live events (its id, or its turn's) stays the live entry, which takes
 * the stored sequence so that it sorts where the conversation stored it. */
export function mergeStored(state: RoomState, messages: StoredMessage[]): RoomState {
  const byMessage = new Map(state.entries.filter((entry) => entry.messageId).map((entry) => [entry.messageId as string, entry]));
  const byTurn = new Map(state.entries.filter((entry) => entry.turnId).map((entry) => [entry.turnId as string, entry]));
  const placed = new Map<Entry, number>();
  const added: Entry[] = [];
  for (const message of messages) {
    if (!message.id) continue;
    const live = byMessage.get(message.id) ?? (message.turnId ? byTurn.get(message.turnId) : undefined);
    if (live) {
      if (live.sequence >= LIVE_SEQUENCE) placed.set(live, Number(message.sequence ?? live.sequence));
      continue;
    }
    const role = (message.role ?? "").replace("MESSAGE_ROLE_", "").toLowerCase() as Entry["role"];
    const entry: Entry = {
      key: message.id,
      turnId: message.turnId || null,
      messageId: message.id,
      role: role || "user",
      authorId: message.authorId ?? "",
      text: message.text ?? "",
      state: "stored",
      sequence: Number(message.sequence ?? 0),
      time: message.createTime ?? "",
    };
    byMessage.set(message.id, entry); // the same message twice in one merge is added once
    added.push(entry);
  }
  if (added.length === 0 && placed.size === 0) return state;
  const kept = state.entries.map((entry) => (placed.has(entry) ? { ...entry, sequence: placed.get(entry) as number } : entry));
  const entries = [...kept, ...added].sort((a, b) => a.sequence - b.sequence);
  return { ...state, entries };
}

/** Live events that arrived before the stored history was read, applied in their order. */
export function applyEvents(state: RoomState, frames: ServerEvent[], names: Names): RoomState {
  return frames.reduce((current, frame) => applyEvent(current, frame, names), state);
}

/** A message this client sent, shown at once (the stored copy replaces nothing: same id). */
/** The own message `messageId`, refused when sent (rate limited, ...): kept, marked as not sent. */
export function refuseOwnMessage(state: RoomState, messageId: string, reason: string): RoomState {
  const entries = state.entries.map((entry) => (entry.role === "user" && entry.messageId === messageId ? { ...entry, state: "failed" as const, refusal: reason } : entry));
  return { ...state, entries };
}

export function addOwnMessage(state: RoomState, messageId: string, words: string, userId: string): RoomState {
  const entry: Entry = { key: messageId, turnId: null, messageId, role: "user", authorId: userId, text: words, state: "streaming", sequence: LIVE_SEQUENCE + state.entries.length, time: new Date().toISOString() };
  return { ...state, entries: [...state.entries, entry] };
}
