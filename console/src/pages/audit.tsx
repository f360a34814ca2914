// The tenant's audit log, for its admins (the `audit:read` scope; the shell shows no link to anyone
// else, and the edge answers 403 anyway), filtered by action, subject and time, newest first.
import { useEffect, useState } from "preact/hooks";

import { api, describe, type Schemas } from "../api/client";
import type { paths } from "../api/schema";
import { Page, StatusLine, formatTime, type Notice } from "../ui/status";
import { DataTable } from "../ui/table";

type AuditEvent = Schemas["macp.token.v1.AuditEvent"];
type Action = NonNullable<NonNullable<paths["/v1/audit"]["get"]["parameters"]["query"]>["action"]>;

interface Filters {
  action: string;
  subject: string;
  start: string;
  end: string;
}

/** The actions the edge accepts, read from its own OpenAPI document so the list never drifts. */
async function auditActions(): Promise<string[]> {
  try {
    const document = (await (await fetch("/v1/openapi.json")).json()) as {
      paths: Record<string, { get?: { parameters?: { name: string; schema?: { enum?: string[] } }[] } }>;
    };
    const parameter = document.paths["/v1/audit"]?.get?.parameters?.find((each) => each.name === "action");
    return parameter?.schema?.enum ?? [];
  } catch {
    return [];
  }
}

function iso(local: string): string | undefined {
  return local ? new Date(local).toISOString() : undefined;
}

export function AuditPage() {
  const [actions, setActions] = useState<string[]>([]);
  const [filters, setFilters] = useState<Filters>({ action: "", subject: "", start: "", end: "" });
  const [events, setEvents] = useState<AuditEvent[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [notice, setNotice] = useState<Notice | null>(null);

  const load = async (pageToken?: string) => {
    const query = {
      page_size: 50,
      ...(filters.action ? { action: filters.action as Action } : {}),
      ...(filters.subject ? { subject: filters.subject } : {}),
      ...(iso(filters.start) ? { start_time: iso(filters.start) } : {}),
      ...(iso(filters.end) ? { end_time: iso(filters.end) } : {}),
      ...(pageToken ? { page_token: pageToken } : {}),
    };
    const { data, error, response } = await api.GET("/v1/audit", { params: { query } });
    if (!data) {
      setNotice({ tone: "error", text: describe(error, response) });
      return;
    }
    const page = data.events ?? [];
    setEvents(pageToken ? [...(events ?? []), ...page] : page);
    setNext(data.nextPageToken || null);
    setNotice({ tone: "info", text: `${pageToken ? "More" : page.length} audit events shown.` });
  };

  useEffect(() => {
    void auditActions().then(setActions);
    void load();
  }, []);

  const set = (key: keyof Filters) => (event: Event) => setFilters({ ...filters, [key]: (event.currentTarget as HTMLInputElement).value });

  return (
    <Page title="Audit log">
      <form
        class="card"
        aria-label="Filter the audit log"
        onSubmit={(event) => {
          event.preventDefault();
          void load();
        }}
      >
        <div class="grid">
          <label>
            Action
            <select name="action" value={filters.action} onChange={set("action")}>
              <option value="">Any action</option>
              {actions.map((action) => (
                <option key={action} value={action}>
                  {action}
                </option>
              ))}
            </select>
          </label>
          <label>
            Subject <span class="hint">(a user, client or agent id)</span>
            <input name="subject" value={filters.subject} onInput={set("subject")} autoComplete="off" />
          </label>
          <label>
            From
            <input type="datetime-local" name="start" value={filters.start} onInput={set("start")} />
          </label>
          <label>
            Until
            <input type="datetime-local" name="end" value={filters.end} onInput={set("end")} />
          </label>
        </div>
        <button type="submit">Filter</button>
      </form>
      <StatusLine notice={notice} testid="audit-status" />
      {events && (
        <DataTable label="Audit events" caption="Audit events, newest first" columns={["Time", "Action", "Outcome", "Subject", "Resource", "Client"]} testid="audit-table">
          {events.map((event) => (
            <tr key={event.id} data-testid="audit-row" data-action={event.action}>
              <td>{formatTime(event.time)}</td>
              <th scope="row">{event.action}</th>
              <td>{event.outcome}</td>
              <td>{event.subject}</td>
              <td>{event.resource}</td>
              <td>{event.clientId}</td>
            </tr>
          ))}
        </DataTable>
      )}
      {next && (
        <button type="button" class="secondary" onClick={() => void load(next)}>
          Show older events
        </button>
      )}
    </Page>
  );
}
