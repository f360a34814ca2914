// The live room of one conversation: stored messages (older pages load on scrolling up), every
// agent's answer streaming token by token in its own color with its name, bids as one bar per
// agent, what happens said in words in a live region, cancel and interrupt, and a connection that
// comes back after a drop and resumes from the last event id. It subscribes before it reads the
// stored history and holds the events that arrive meanwhile, so an event between the two is shown
// (once) without a reload.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";

import { api, describe, type Agent, type Conversation } from "../api/client";
import { session } from "../auth/session";
import { NotFoundPage } from "../pages/not_found";
import { Page, enumWords } from "../ui/status";
import { EMPTY_ROOM, addOwnMessage, applyEvent, applyEvents, errorWords, mergeStored, refuseOwnMessage, type Entry, type RoomState } from "./model";
import { RoomSocket, type Connection, type ServerEvent } from "./socket";

// Each agent's color: dark enough for 4.5:1 on white as text, told apart as borders.
const COLORS = ["#1f5fa8", "#a3420f", "#2b7a3d", "#7a3b9e", "#9c2450", "#0f6e73", "#6b5a00", "#4a4fb5"];
const PAGE = 30;
// How long the history waits for the subscription before it is read anyway.
const SUBSCRIBE_WAIT_MS = 3_000;

export function RoomPage({ conversationId }: { conversationId: string }) {
  const [conversation, setConversation] = useState<Conversation | null>(null);
  const [missing, setMissing] = useState<string | null>(null);
  const [agents, setAgents] = useState<Map<string, Agent>>(new Map());
  const [room, setRoom] = useState<RoomState>(EMPTY_ROOM);
  const [connection, setConnection] = useState<{ state: Connection; detail: string }>({ state: "connecting", detail: "Connecting…" });
  const [olderToken, setOlderToken] = useState<string | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const [draft, setDraft] = useState("");
  const [sendError, setSendError] = useState("");
  const socket = useRef<RoomSocket | null>(null);
  const log = useRef<HTMLDivElement>(null);
  const stickToBottom = useRef(true);
  // The message id of each message frame sent, by the frame's request id, so a refusal (which
  // names the request) marks the right message as not sent.
  const sentMessages = useRef(new Map<string, string>());
  const namesRef = useRef<(id: string) => string>((id) => id.slice(0, 8));

  const participants = conversation?.participantAgentIds ?? [];
  const colorOf = useMemo(() => {
    const index = new Map(participants.map((id, i) => [id, COLORS[i % COLORS.length] as string]));
    return (id: string) => index.get(id) ?? "#4a5361";
  }, [participants.join(",")]);
  namesRef.current = (id: string) => agents.get(id)?.name ?? `agent ${id.slice(0, 8)}`;

  useEffect(() => {
    let live = true;
    const names = (id: string) => namesRef.current(id);
    const newestPage = () => api.GET("/v1/conversations/{id}/messages", { params: { path: { id: conversationId }, query: { page_size: PAGE, order_by: "sequence desc" } } });
    // Live events that arrive before the stored history is read wait here, and are applied under it
    // (mergeStored keeps a message that came both ways once, in its stored place).
    let early: ServerEvent[] | null = [];
    let historyAsked = false;
    // A subscription without a last event id is live from when the orchestrator read the log's
    // position, a moment after `subscribed`: what was stored before that and after a read of the
    // history would be shown by neither. The first event after such a subscription was appended
    // after that moment, so reading the newest page once more after it closes the gap; and a
    // subscription that comes after the history was read (a slow first connection, a drop before
    // any event) reads it again at once too, for a room where nothing happens after.
    let catchUp = false;
    let catchUpAfterHistory = false;
    const readNewestAgain = async () => {
      const page = await newestPage();
      if (live && page.data) setRoom((state) => mergeStored(state, page.data.messages ?? []));
    };
    let subscribedOrClosed: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (subscribedOrClosed = resolve));

    const follower = new RoomSocket(conversationId, {
      onEvent: (event) => {
        if (catchUp) {
          catchUp = false;
          // A history read not yet asked for covers the gap by itself.
          if (early === null) void readNewestAgain();
          else if (historyAsked) catchUpAfterHistory = true;
        }
        if (early !== null) early.push(event);
        else setRoom((state) => applyEvent(state, event, names));
      },
      onError: (error) => {
        const words = error.code === "RESOURCE_EXHAUSTED" ? errorWords("RATE_LIMITED", error.message, error.retry_after) : errorWords(error.code, error.message, error.retry_after);
        // A refused message frame: its message was never stored, so it is shown as not sent.
        const refused = error.request_id === undefined ? undefined : sentMessages.current.get(error.request_id);
        setRoom((state) => {
          const noted = { ...state, notes: [...state.notes, { id: `error-${Date.now()}`, tone: "error" as const, text: words }].slice(-30) };
          return refused === undefined ? noted : refuseOwnMessage(noted, refused, words);
        });
      },
      onConnection: (state, detail) => {
        setConnection({ state, detail });
        if (state === "live" && follower.last === null) {
          catchUp = true;
          if (early === null) void readNewestAgain();
        }
        if (state === "live" || state === "closed") subscribedOrClosed();
      },
    });

    (async () => {
      const { data, error, response } = await api.GET("/v1/conversations/{id}", { params: { path: { id: conversationId } } });
      if (!live) return;
      if (!data) {
        setMissing(response.status === 404 || response.status === 403 ? "conversation" : describe(error, response));
        return;
      }
      setConversation(data);
      // Subscribe first, then read the newest stored page: nothing that happens in between is lost.
      socket.current = follower;
      follower.start();
      void Promise.all((data.participantAgentIds ?? []).map(async (id) => (await api.GET("/v1/agents/{id}", { params: { path: { id } } })).data)).then((loaded) => {
        if (live) setAgents(new Map(loaded.filter((agent): agent is Agent => Boolean(agent?.id)).map((agent) => [agent.id as string, agent])));
      });
      // A socket that cannot subscribe soon (the edge away) does not hold the history back; it
      // catches up when it does subscribe.
      await Promise.race([ready, new Promise((resolve) => window.setTimeout(resolve, SUBSCRIBE_WAIT_MS))]);
      if (!live) return;
      historyAsked = true;
      const page = await newestPage();
      if (!live) return;
      const arrived = early ?? [];
      early = null;
      setRoom((state) => mergeStored(applyEvents(state, arrived, names), page.data?.messages ?? []));
      if (page.data) setOlderToken(page.data.nextPageToken || null);
      if (catchUpAfterHistory) void readNewestAgain();
    })();
    return () => {
      live = false;
      follower.stop();
      socket.current = null;
    };
  }, [conversationId]);

  // Keep the newest in view while the reader is at the bottom.
  useEffect(() => {
    const element = log.current;
    if (element && stickToBottom.current) element.scrollTop = element.scrollHeight;
  }, [room.entries]);

  const loadOlder = async () => {
    if (!olderToken || loadingOlder) return;
    setLoadingOlder(true);
    const element = log.current;
    const before = element ? element.scrollHeight - element.scrollTop : 0;
    const page = await api.GET("/v1/conversations/{id}/messages", {
      params: { path: { id: conversationId }, query: { page_size: PAGE, order_by: "sequence desc", page_token: olderToken } },
    });
    if (page.data) {
      setRoom((state) => mergeStored(state, page.data.messages ?? []));
      setOlderToken(page.data.nextPageToken || null);
      // Keep the reader's place: what was on screen stays where it was.
      requestAnimationFrame(() => {
        if (element) element.scrollTop = element.scrollHeight - before;
      });
    }
    setLoadingOlder(false);
  };

  const onScroll = () => {
    const element = log.current;
    if (!element) return;
    stickToBottom.current = element.scrollHeight - element.scrollTop - element.clientHeight < 40;
    if (element.scrollTop < 60) void loadOlder();
  };

  const send = (event: Event) => {
    event.preventDefault();
    const words = draft.trim();
    if (!words || !socket.current) return;
    const messageId = crypto.randomUUID();
    try {
      const requestId = socket.current.send({ action: "message", text: words, message_id: messageId });
      sentMessages.current.set(requestId, messageId);
      const me = session.current.state === "signed-in" ? session.current.claims.sub : "";
      setRoom((state) => addOwnMessage(state, messageId, words, me));
      setDraft("");
      setSendError("");
      stickToBottom.current = true;
    } catch (failure) {
      setSendError((failure as Error).message);
    }
  };

  const cancel = (turnId?: string) => {
    try {
      socket.current?.send({ action: "cancel", ...(turnId ? { turn_id: turnId } : {}), reason: turnId ? "interrupted from the console" : "cancelled from the console" });
    } catch (failure) {
      setSendError((failure as Error).message);
    }
  };

  if (missing) return missing === "conversation" ? <NotFoundPage what="conversation" /> : <Page title="Conversation"><p role="alert">{missing}</p></Page>;
  const running = room.activeTurns.length > 0;
  const archived = conversation?.status === "CONVERSATION_STATUS_ARCHIVED";
  const latestNotes = room.notes.slice(-6);

  return (
    <Page title={conversation?.title || "Conversation"}>
      <div class="room-head">
        <p class="muted">
          {conversation ? `${enumWords(conversation.turnPolicy, "TURN_POLICY_")} · ${participants.map((id) => namesRef.current(id)).join(", ")}` : "Loading…"}
        </p>
        <p class={`connection ${connection.state}`} role="status" aria-live="polite" data-testid="connection-status" data-state={connection.state}>
          {connection.detail}
        </p>
      </div>
      <ul class="legend" aria-label="Agents">
        {participants.map((id) => (
          <li key={id} style={{ borderColor: colorOf(id), color: colorOf(id) }}>
            {namesRef.current(id)}
          </li>
        ))}
      </ul>
      {room.bids && (
        <section class="bids card" aria-labelledby="bids-title" data-testid="bids">
          <h2 id="bids-title">Bids</h2>
          <ul>
            {room.bids.bars.map((bar) => (
              <li key={bar.agentId} data-testid="bid-bar" data-agent-id={bar.agentId} data-score={bar.score ?? ""}>
                <span class="bid-name" style={{ color: colorOf(bar.agentId) }}>
                  {namesRef.current(bar.agentId)}
                  {bar.winner ? " (won)" : ""}
                </span>
                <span class="bid-track" role="meter" aria-valuemin={0} aria-valuemax={1} aria-valuenow={bar.score ?? 0} aria-label={`${namesRef.current(bar.agentId)}'s bid`}>
                  <span class="bid-fill" style={{ width: `${Math.round((bar.score ?? 0) * 100)}%`, background: colorOf(bar.agentId) }} />
                </span>
                <span class="bid-score">{bar.score === null ? "waiting" : bar.declined ? "declined" : bar.score.toFixed(2)}</span>
              </li>
            ))}
          </ul>
        </section>
      )}
      <section class="log card" aria-labelledby="log-title">
        <h2 id="log-title" class="sr-only">
          Messages
        </h2>
        <div class="scroller" ref={log} onScroll={onScroll} tabIndex={0} aria-label="Messages, oldest at the top" data-testid="room-log">
          {olderToken ? (
            <button type="button" class="secondary older" onClick={() => void loadOlder()} disabled={loadingOlder} data-testid="load-older">
              {loadingOlder ? "Loading older messages…" : "Load older messages"}
            </button>
          ) : (
            <p class="muted older">The beginning of the conversation.</p>
          )}
          {room.entries.map((entry) => (
            <EntryView key={entry.key} entry={entry} name={namesRef.current} color={colorOf} onInterrupt={() => cancel(entry.turnId ?? undefined)} />
          ))}
        </div>
      </section>
      <section class="events" aria-labelledby="events-title">
        <h2 id="events-title" class="sr-only">
          What happened
        </h2>
        {/* The live region wraps the list: a role on the <ul> itself would unmake it a list. */}
        <div role="log" aria-live="polite" data-testid="room-events">
          <ul>
            {latestNotes.map((item) => (
              <li key={item.id} class={item.tone}>
                {item.text}
              </li>
            ))}
          </ul>
        </div>
      </section>
      <form class="composer card" onSubmit={send} aria-label="Send a message">
        <label>
          Message
          <textarea
            name="text"
            rows={2}
            maxLength={32000}
            value={draft}
            disabled={archived}
            onInput={(event) => setDraft(event.currentTarget.value)}
            onKeyDown={(event) => {
              if (event.key === "Enter" && !event.shiftKey) send(event);
            }}
            data-testid="message-input"
          />
        </label>
        <p class="status error" role="alert">
          {sendError || (archived ? "This conversation is archived: it takes no new messages." : "")}
        </p>
        <div class="buttons">
          <button type="submit" disabled={archived || connection.state !== "live"} data-testid="send">
            Send
          </button>
          <button type="button" class="danger" onClick={() => cancel()} disabled={!running} data-testid="cancel-round">
            Cancel the round
          </button>
        </div>
      </form>
    </Page>
  );
}

function EntryView({ entry, name, color, onInterrupt }: { entry: Entry; name: (id: string) => string; color: (id: string) => string; onInterrupt: () => void }) {
  if (entry.role !== "agent") {
    return (
      <article class={`entry ${entry.role}`} data-testid="message" data-message-id={entry.messageId ?? ""} data-state={entry.state}>
        <h3>{entry.role === "user" ? "You" : entry.role === "tool" ? "Tool" : "System"}</h3>
        <p>{entry.text}</p>
        {entry.refusal && <p class="refusal">Not sent. {entry.refusal}</p>}
      </article>
    );
  }
  const streaming = entry.state === "streaming";
  const ended = entry.state === "stored" || entry.state === "completed" ? "" : ` (${entry.state})`;
  return (
    <article
      class={`entry agent ${entry.state}`}
      style={{ borderLeftColor: color(entry.authorId) }}
      data-testid="agent-stream"
      data-agent-id={entry.authorId}
      data-turn-id={entry.turnId ?? ""}
      data-state={entry.state}
      aria-busy={streaming}
    >
      <h3 style={{ color: color(entry.authorId) }}>
        {name(entry.authorId)}
        <span class="muted">{streaming ? " is answering…" : ended}</span>
      </h3>
      <p class="stream-text">{entry.text}</p>
      {streaming && entry.turnId && (
        <button type="button" class="secondary small" onClick={onInterrupt} data-testid="interrupt" aria-label={`Interrupt ${name(entry.authorId)}`}>
          Interrupt
        </button>
      )}
    </article>
  );
}
