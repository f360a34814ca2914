// One conversation's WebSocket (docs/websocket.md): connect with the access token in the query (a
// browser cannot set headers on a WebSocket), subscribe, and after any drop reconnect with a fresh
// token and subscribe with the last event id seen, so the log replays exactly what was missed.
// Events at or before that id (a replay overlapping what arrived) are dropped here, so the room
// sees each event once, in order. A subscription without a last event id (the first, or one after
// a drop before any event arrived) is live from a moment the client cannot name: `subscribed`
// means the edge sent the Join, and the orchestrator reads the log's position a little later, so
// the room (room.tsx) reads the newest stored messages again on the first event after it.

import { session } from "../auth/session";

export interface ServerEvent {
  type: "event";
  conversation_id: string;
  event_id: string;
  kind: string;
  event: Record<string, unknown> & { event_id: string; time?: string };
}
export interface ServerError {
  type: "error";
  code: string;
  message: string;
  action?: string;
  retry_after?: number;
  subscribed?: boolean;
  request_id?: string; // the refused frame's, as `send` returned it
}
export type Connection = "connecting" | "live" | "reconnecting" | "closed";

export interface RoomHandlers {
  onEvent(event: ServerEvent): void;
  onError(error: ServerError): void;
  onConnection(state: Connection, detail: string): void;
}

/** -1, 0 or 1 as log id `a` (`<ms>-<seq>`) is before, equal to or after `b`. */
export function compareEventIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split("-").map(Number);
  const [bm = 0, bs = 0] = b.split("-").map(Number);
  return am !== bm ? Math.sign(am - bm) : Math.sign(as - bs);
}

const MAX_BACKOFF_MS = 10_000;

export class RoomSocket {
  private socket: WebSocket | null = null;
  private lastEventId: string | null = null;
  private attempts = 0;
  private stopped = false;
  private timer: number | undefined;
  private requestCounter = 0;

  constructor(
    private readonly conversationId: string,
    private readonly handlers: RoomHandlers,
  ) {}

  get last(): string | null {
    return this.lastEventId;
  }

  start(): void {
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.socket?.close(1000, "leaving the room");
    this.socket = null;
  }

  /** Closes the socket as a network drop would (tests and the "drop" control use it). */
  drop(): void {
    this.socket?.close(4000, "dropped by the client");
  }

  send(frame: Record<string, unknown>): string {
    const requestId = `console-${Date.now().toString(36)}-${(this.requestCounter += 1)}`;
    const body = { ...frame, conversation_id: this.conversationId, request_id: requestId };
    if (this.socket?.readyState !== WebSocket.OPEN) throw new Error("not connected: wait for the connection to come back");
    this.socket.send(JSON.stringify(body));
    return requestId;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.handlers.onConnection(this.attempts === 0 ? "connecting" : "reconnecting", this.attempts === 0 ? "Connecting…" : `Reconnecting (attempt ${this.attempts})…`);
    let token: string;
    try {
      token = await session.token();
    } catch {
      this.handlers.onConnection("closed", "Signed out: sign in again to follow the conversation.");
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/v1/ws?access_token=${encodeURIComponent(token)}`);
    this.socket = socket;
    socket.onopen = () => {
      const subscribe: Record<string, unknown> = { action: "subscribe" };
      if (this.lastEventId) subscribe["last_event_id"] = this.lastEventId;
      socket.send(JSON.stringify({ ...subscribe, conversation_id: this.conversationId }));
    };
    socket.onmessage = (message) => this.receive(String(message.data));
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped) return;
      if (close.code === 4401) void session.refresh().catch(() => undefined);
      this.attempts += 1;
      const wait = Math.min(MAX_BACKOFF_MS, 250 * 2 ** Math.min(this.attempts - 1, 6));
      const why = close.reason ? `: ${close.reason}` : "";
      this.handlers.onConnection("reconnecting", `Connection lost (${close.code}${why}); reconnecting in ${Math.round(wait / 100) / 10} s and resuming where it stopped.`);
      this.timer = window.setTimeout(() => void this.connect(), wait);
    };
  }

  private receive(data: string): void {
    let frame: Record<string, unknown>;
    try {
      frame = JSON.parse(data) as Record<string, unknown>;
    } catch {
      return;
    }
    switch (frame["type"]) {
      case "subscribed":
        this.attempts = 0;
        this.handlers.onConnection("live", this.lastEventId ? "Live again: caught up from where the connection dropped." : "Live");
        return;
      case "event": {
        const event = frame as unknown as ServerEvent;
        if (event.conversation_id !== this.conversationId) return;
        if (this.lastEventId && compareEventIds(event.event_id, this.lastEventId) <= 0) return;
        this.lastEventId = event.event_id;
        this.handlers.onEvent(event);
        return;
      }
      case "error": {
        const error = frame as unknown as ServerError;
        this.handlers.onError(error);
        // The log no longer holds the last event seen (trimmed while away): follow it live again;
        // the room reads the stored messages again once the subscription is live (RoomHandlers).
        if (error.subscribed === false && error.code === "OUT_OF_RANGE") this.lastEventId = null;
        // The conversation's stream ended: follow it again from where it stopped.
        if (error.subscribed === false && error.code !== "NOT_FOUND" && error.code !== "PERMISSION_DENIED") {
          this.timer = window.setTimeout(() => this.socket?.send(JSON.stringify({ action: "subscribe", conversation_id: this.conversationId, ...(this.lastEventId ? { last_event_id: this.lastEventId } : {}) })), 500);
        }
        return;
      }
      default:
        return;
    }
  }
}
