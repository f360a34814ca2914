// Conversations: list, create (participants, turn policy with its coordinator, limits, double
// texting), archive (closing it), and download an archive through its presigned link.
import { useEffect, useState } from "preact/hooks";

import { api, describe, type Agent, type Conversation, type Schemas } from "../api/client";
import { Page, StatusLine, enumWords, formatTime, type Notice } from "../ui/status";
import { listAllAgents } from "./agents";
import { DataTable } from "../ui/table";

type CreateBody = Schemas["macp.conversation.v1.Conversation-create"];
type TurnPolicy = CreateBody["turnPolicy"];
type DoubleTexting = NonNullable<CreateBody["doubleTextingPolicy"]>;

const POLICIES: [TurnPolicy, string][] = [
  ["TURN_POLICY_ROUND_ROBIN", "Round robin: every agent answers in turn"],
  ["TURN_POLICY_BID", "Bid: the agents bid, the best answers"],
  ["TURN_POLICY_COORDINATOR", "Coordinator: one agent chooses who answers"],
  ["TURN_POLICY_PIPELINE", "Pipeline: each agent works on the previous answer"],
  ["TURN_POLICY_CHOREOGRAPHY", "Choreography: every agent that wants to answers, all at once"],
];
const DOUBLE_TEXTING: [DoubleTexting, string][] = [
  ["DOUBLE_TEXTING_POLICY_ENQUEUE", "Queue it after the round in flight"],
  ["DOUBLE_TEXTING_POLICY_INTERRUPT", "Interrupt the round in flight"],
  ["DOUBLE_TEXTING_POLICY_REJECT", "Refuse it while a round runs"],
];

export function ConversationsPage() {
  const [conversations, setConversations] = useState<Conversation[] | null>(null);
  const [agents, setAgents] = useState<Agent[]>([]);
  const [notice, setNotice] = useState<Notice | null>(null);
  const [creating, setCreating] = useState(false);
  const [downloads, setDownloads] = useState<Record<string, string>>({});

  const load = async () => {
    const { data, error, response } = await api.GET("/v1/conversations", { params: { query: { page_size: 100 } } });
    if (data) setConversations(data.conversations ?? []);
    else setNotice({ tone: "error", text: describe(error, response) });
  };
  useEffect(() => {
    void load();
    listAllAgents().then(setAgents, (error: Error) => setNotice({ tone: "error", text: error.message }));
  }, []);
  const names = new Map(agents.map((agent) => [agent.id ?? "", agent.name ?? ""]));

  const archive = async (conversation: Conversation, close: boolean) => {
    setNotice({ tone: "info", text: close ? "Archiving…" : "Preparing the download…" });
    const { data, error, response } = await api.POST("/v1/conversations/{id}/archive", {
      params: { path: { id: conversation.id ?? "" } },
      body: { close, ...(close ? { etag: conversation.etag ?? "" } : {}) },
    });
    if (!data) {
      setNotice({ tone: "error", text: `Could not archive ${conversation.title || "the conversation"}: ${describe(error, response)}` });
      return;
    }
    if (data.presignedUrl) setDownloads({ ...downloads, [conversation.id ?? ""]: data.presignedUrl });
    setNotice({
      tone: "ok",
      text: `${close ? "Archived" : "Archive made of"} ${conversation.title || "the conversation"} (${data.archive?.messageCount ?? 0} messages): its download link is in the list.`,
    });
    await load();
  };

  return (
    <Page
      title="Conversations"
      actions={
        <button type="button" onClick={() => setCreating(true)} data-testid="new-conversation">
          New conversation
        </button>
      }
    >
      <StatusLine notice={notice} testid="conversations-status" />
      {creating && (
        <ConversationForm
          agents={agents}
          onDone={async (text) => {
            setCreating(false);
            if (text) setNotice({ tone: "ok", text });
            await load();
          }}
        />
      )}
      {conversations === null ? (
        <p>Loading conversations…</p>
      ) : conversations.length === 0 ? (
        <p>No conversations yet.</p>
      ) : (
        <DataTable label="Conversations" caption="Your conversations" columns={["Title", "Agents", "Turn policy", "Status", "Changed", { label: "Actions", hidden: true }]} testid="conversations-table">
          {conversations.map((conversation) => {
            const id = conversation.id ?? "";
            const archived = conversation.status === "CONVERSATION_STATUS_ARCHIVED";
            return (
              <tr key={id} data-testid="conversation-row" data-conversation-id={id}>
                <th scope="row">
                  <a href={`/console/conversations/${id}`}>{conversation.title || "Untitled"}</a>
                </th>
                <td>{(conversation.participantAgentIds ?? []).map((agent) => names.get(agent) ?? agent.slice(0, 8)).join(", ")}</td>
                <td>{enumWords(conversation.turnPolicy, "TURN_POLICY_")}</td>
                <td>{enumWords(conversation.status, "CONVERSATION_STATUS_")}</td>
                <td>{formatTime(conversation.updateTime)}</td>
                <td class="actions">
                  {!archived && (
                    <button type="button" class="secondary" onClick={() => void archive(conversation, true)} aria-label={`Archive ${conversation.title || id}`}>
                      Archive
                    </button>
                  )}
                  {downloads[id] ? (
                    <a href={downloads[id]} download rel="noreferrer" data-testid="archive-download">
                      Download archive
                    </a>
                  ) : (
                    <button type="button" class="secondary" onClick={() => void archive(conversation, false)} aria-label={`Get archive of ${conversation.title || id}`}>
                      Get archive
                    </button>
                  )}
                </td>
              </tr>
            );
          })}
        </DataTable>
      )}
    </Page>
  );
}

function ConversationForm({ agents, onDone }: { agents: Agent[]; onDone: (message: string | null) => void }) {
  const [title, setTitle] = useState("");
  const [participants, setParticipants] = useState<string[]>([]);
  const [policy, setPolicy] = useState<TurnPolicy>("TURN_POLICY_ROUND_ROBIN");
  const [coordinator, setCoordinator] = useState("");
  const [maxTurns, setMaxTurns] = useState("");
  const [maxToolCalls, setMaxToolCalls] = useState("");
  const [doubleTexting, setDoubleTexting] = useState<DoubleTexting>("DOUBLE_TEXTING_POLICY_ENQUEUE");
  const [notice, setNotice] = useState<Notice | null>(null);
  const [busy, setBusy] = useState(false);

  const toggle = (id: string, on: boolean) => setParticipants(on ? [...participants, id] : participants.filter((each) => each !== id));

  const submit = async (event: Event) => {
    event.preventDefault();
    if (participants.length === 0) {
      setNotice({ tone: "error", text: "Choose at least one agent as a participant." });
      return;
    }
    if (policy === "TURN_POLICY_COORDINATOR" && !participants.includes(coordinator)) {
      setNotice({ tone: "error", text: "Choose the coordinator among the participants." });
      return;
    }
    setBusy(true);
    const limits: Schemas["macp.conversation.v1.ConversationLimits"] = {};
    if (maxTurns) limits.maxAgentTurnsPerUserMessage = Number(maxTurns);
    if (maxToolCalls) limits.maxToolCallsPerTurn = Number(maxToolCalls);
    const { data, error, response } = await api.POST("/v1/conversations", {
      body: {
        title,
        participantAgentIds: participants,
        turnPolicy: policy,
        ...(policy === "TURN_POLICY_COORDINATOR" ? { coordinatorAgentId: coordinator } : {}),
        limits,
        doubleTextingPolicy: doubleTexting,
      },
    });
    setBusy(false);
    if (data) onDone(`Created ${data.title || "the conversation"}.`);
    else setNotice({ tone: "error", text: describe(error, response) });
  };

  return (
    <form class="card" onSubmit={(event) => void submit(event)} aria-label="New conversation" data-testid="conversation-form">
      <h2>New conversation</h2>
      <label>
        Title
        <input name="title" value={title} maxLength={200} onInput={(event) => setTitle(event.currentTarget.value)} autoComplete="off" />
      </label>
      <fieldset>
        <legend>Participants</legend>
        {agents.length === 0 && <p class="muted">Create agents first.</p>}
        {agents.map((agent) => (
          <label class="inline" key={agent.id}>
            <input type="checkbox" name="participant" value={agent.id} checked={participants.includes(agent.id ?? "")} onChange={(event) => toggle(agent.id ?? "", event.currentTarget.checked)} />
            {agent.name}
          </label>
        ))}
      </fieldset>
      <div class="grid">
        <label>
          Turn policy
          <select name="turnPolicy" value={policy} onChange={(event) => setPolicy(event.currentTarget.value as TurnPolicy)}>
            {POLICIES.map(([value, label]) => (
              <option key={value} value={value}>
                {label}
              </option>
            ))}
          </select>
        </label>
        {policy === "TURN_POLICY_COORDINATOR" && (
          <label>
            Coordinator
            <select name="coordinator" value={coordinator} onChange={(event) => setCoordinator(event.currentTarget.value)} required>
              <option value="">Choose a participant</option>
              {agents
                .filter((agent) => participants.includes(agent.id ?? ""))
                .map((agent) => (
                  <option key={agent.id} value={agent.id}>
                    {agent.name}
                  </option>
                ))}
            </select>
          </label>
        )}
        <label>
          A second message while a round runs
          <select name="doubleTexting" value={doubleTexting} onChange={(event) => setDoubleTexting(event.currentTarget.value as DoubleTexting)}>
            {DOUBLE_TEXTING.map(([value, label]) => (
              <option key={value} value={value}>
                {label}
              </option>
            ))}
          </select>
        </label>
        <label>
          Agent turns per message <span class="hint">(empty: the default)</span>
          <input type="number" name="maxTurns" min={1} max={64} value={maxTurns} onInput={(event) => setMaxTurns(event.currentTarget.value)} />
        </label>
        <label>
          Tool calls per turn <span class="hint">(empty: the default)</span>
          <input type="number" name="maxToolCalls" min={1} max={64} value={maxToolCalls} onInput={(event) => setMaxToolCalls(event.currentTarget.value)} />
        </label>
      </div>
      <StatusLine notice={notice} testid="conversation-form-status" />
      <div class="buttons">
        <button type="submit" disabled={busy}>
          Create
        </button>
        <button type="button" class="secondary" onClick={() => onDone(null)}>
          Cancel
        </button>
      </div>
    </form>
  );
}
