// Agents: list, create, edit (conditional on the etag last read: a conflict is said as such) and delete.
import { useEffect, useState } from "preact/hooks";

import { api, describe, ifMatch, type Agent } from "../api/client";
import { Page, StatusLine, formatTime, type Notice } from "../ui/status";
import { DataTable } from "../ui/table";

interface Draft {
  name: string;
  provider: string;
  model: string;
  systemPrompt: string;
  capabilities: string;
}

const EMPTY: Draft = { name: "", provider: "", model: "", systemPrompt: "", capabilities: "" };

function draftOf(agent: Agent): Draft {
  return {
    name: agent.name ?? "",
    provider: agent.provider ?? "",
    model: agent.model ?? "",
    systemPrompt: agent.systemPrompt ?? "",
    capabilities: (agent.capabilities ?? []).join(", "),
  };
}

function capabilities(text: string): string[] {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter(Boolean);
}

export async function listAllAgents(): Promise<Agent[]> {
  const agents: Agent[] = [];
  let pageToken: string | undefined;
  do {
    const { data, error, response } = await api.GET("/v1/agents", { params: { query: { page_size: 100, ...(pageToken ? { page_token: pageToken } : {}) } } });
    if (!data) throw new Error(describe(error, response));
    agents.push(...(data.agents ?? []));
    pageToken = data.nextPageToken || undefined;
  } while (pageToken);
  return agents;
}

export function AgentsPage() {
  const [agents, setAgents] = useState<Agent[] | null>(null);
  const [notice, setNotice] = useState<Notice | null>(null);
  const [editing, setEditing] = useState<Agent | "new" | null>(null);

  const load = async () => {
    try {
      setAgents(await listAllAgents());
    } catch (error) {
      setNotice({ tone: "error", text: (error as Error).message });
    }
  };
  useEffect(() => void load(), []);

  const remove = async (agent: Agent) => {
    if (!confirm(`Delete the agent ${agent.name}?`)) return;
    const { error, response } = await api.DELETE("/v1/agents/{id}", {
      params: { path: { id: agent.id ?? "" } },
      headers: ifMatch(agent.etag),
    });
    if (response.ok) {
      setNotice({ tone: "ok", text: `Deleted ${agent.name}.` });
      await load();
    } else setNotice({ tone: "error", text: `Could not delete ${agent.name}: ${describe(error, response)}` });
  };

  return (
    <Page
      title="Agents"
      actions={
        <button type="button" onClick={() => setEditing("new")} data-testid="new-agent">
          New agent
        </button>
      }
    >
      <StatusLine notice={notice} testid="agents-status" />
      {editing && (
        <AgentForm
          agent={editing === "new" ? null : editing}
          onDone={async (text) => {
            setEditing(null);
            if (text) setNotice({ tone: "ok", text });
            await load();
          }}
        />
      )}
      {agents === null ? (
        <p>Loading agents…</p>
      ) : agents.length === 0 ? (
        <p>No agents yet: create one to start a conversation.</p>
      ) : (
        <DataTable label="Agents" caption="Your tenant's agents" columns={["Name", "Model", "Capabilities", "Changed", { label: "Actions", hidden: true }]} testid="agents-table">
          {agents.map((agent) => (
            <tr key={agent.id} data-testid="agent-row" data-agent-id={agent.id}>
              <th scope="row">{agent.name}</th>
              <td>
                {agent.provider}/{agent.model}
              </td>
              <td>{(agent.capabilities ?? []).join(", ")}</td>
              <td>{formatTime(agent.updateTime)}</td>
              <td class="actions">
                <button type="button" class="secondary" onClick={() => setEditing(agent)} aria-label={`Edit ${agent.name}`}>
                  Edit
                </button>
                <button type="button" class="danger" onClick={() => void remove(agent)} aria-label={`Delete ${agent.name}`}>
                  Delete
                </button>
              </td>
            </tr>
          ))}
        </DataTable>
      )}
    </Page>
  );
}

function AgentForm({ agent, onDone }: { agent: Agent | null; onDone: (message: string | null) => void }) {
  const [draft, setDraft] = useState<Draft>(agent ? draftOf(agent) : EMPTY);
  const [notice, setNotice] = useState<Notice | null>(null);
  const [busy, setBusy] = useState(false);
  const field = (key: keyof Draft) => ({
    value: draft[key],
    onInput: (event: Event) => setDraft({ ...draft, [key]: (event.currentTarget as HTMLInputElement).value }),
  });

  const submit = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setNotice({ tone: "info", text: agent ? "Saving…" : "Creating…" });
    try {
      if (agent) {
        // Only the fields that changed: the PATCH's update mask is the body's fields.
        const before = draftOf(agent);
        const changes: Record<string, unknown> = {};
        if (draft.name !== before.name) changes["name"] = draft.name;
        if (draft.provider !== before.provider) changes["provider"] = draft.provider;
        if (draft.model !== before.model) changes["model"] = draft.model;
        if (draft.systemPrompt !== before.systemPrompt) changes["systemPrompt"] = draft.systemPrompt;
        if (draft.capabilities !== before.capabilities) changes["capabilities"] = capabilities(draft.capabilities);
        if (Object.keys(changes).length === 0) {
          onDone("Nothing changed.");
          return;
        }
        const { data, error, response } = await api.PATCH("/v1/agents/{id}", {
          params: { path: { id: agent.id ?? "" } },
          headers: ifMatch(agent.etag),
          body: changes,
        });
        if (data) onDone(`Saved ${data.name}.`);
        else setNotice({ tone: "error", text: describe(error, response) });
      } else {
        const { data, error, response } = await api.POST("/v1/agents", {
          body: {
            name: draft.name,
            provider: draft.provider,
            model: draft.model,
            systemPrompt: draft.systemPrompt,
            capabilities: capabilities(draft.capabilities),
          },
        });
        if (data) onDone(`Created ${data.name}.`);
        else setNotice({ tone: "error", text: describe(error, response) });
      }
    } finally {
      setBusy(false);
    }
  };

  const title = agent ? `Edit ${agent.name}` : "New agent";
  return (
    <form class="card" onSubmit={(event) => void submit(event)} aria-label={title} data-testid="agent-form">
      <h2>{title}</h2>
      <div class="grid">
        <label>
          Name
          <input required maxLength={128} {...field("name")} name="name" autoComplete="off" />
        </label>
        <label>
          Provider
          <input required {...field("provider")} name="provider" placeholder="openai, anthropic, fake…" autoComplete="off" />
        </label>
        <label>
          Model
          <input required {...field("model")} name="model" autoComplete="off" />
        </label>
        <label>
          Capabilities <span class="hint">(comma-separated)</span>
          <input {...field("capabilities")} name="capabilities" autoComplete="off" />
        </label>
      </div>
      <label>
        System prompt
        <textarea rows={3} {...field("systemPrompt")} name="systemPrompt" />
      </label>
      <StatusLine notice={notice} testid="agent-form-status" />
      <div class="buttons">
        <button type="submit" disabled={busy}>
          {agent ? "Save" : "Create"}
        </button>
        <button type="button" class="secondary" onClick={() => onDone(null)}>
          Cancel
        </button>
      </div>
    </form>
  );
}
