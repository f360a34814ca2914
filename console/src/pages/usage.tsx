// Usage this month: tokens, turns and cost per day (one `group_by=day` query for the tenant, and one
// with `agent_id` for an agent picked in the list), the same per agent (one `group_by=agent`
// query), quota gauges and the month's charge from the invoice preview (its line items are the
// plan's meters: used against included, and the overage charged), and the caller's rate-limit
// standing. "Cost" is metering's `costCents`: the usage's list price at the plan's prices before
// the included allowance, so it is what the usage is worth, not what the invoice adds (only the
// part past the allowance is charged). Charts are uPlot (canvas); each has a table of the same
// numbers for screen readers.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

import { api, describe, type Agent, type Schemas } from "../api/client";
import { Page, StatusLine, enumWords, formatNumber, type Notice } from "../ui/status";
import { listAllAgents } from "./agents";
import { DataTable } from "../ui/table";

type Totals = Schemas["macp.metering.v1.UsageTotals"];
type Group = Schemas["macp.metering.v1.UsageGroup"];
type Invoice = Schemas["macp.metering.v1.GetInvoicePreviewResponse"];
type Limits = Schemas["RateLimitStatus"];

/** What the page shows of a set of usage: tokens in and out, agent turns, and the list price. */
interface Figures {
  tokens: number;
  turns: number;
  costCents: number;
}

interface Day extends Figures {
  start: Date;
}

const figuresOf = (totals: Totals | undefined): Figures => ({
  tokens: Number(totals?.inputTokens ?? 0) + Number(totals?.outputTokens ?? 0),
  turns: Number(totals?.agentTurns ?? 0),
  costCents: Number(totals?.costCents ?? 0),
});

/** The current UTC month so far, [first day, tomorrow), as the billing calendar counts it. */
function monthSoFar(now: Date): { start: Date; end: Date; days: Date[] } {
  const utcDay = (day: number) => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), day));
  const days: Date[] = [];
  for (let day = 1; day <= now.getUTCDate(); day += 1) days.push(utcDay(day));
  return { start: utcDay(1), end: utcDay(now.getUTCDate() + 1), days };
}

/** Every group of a usage query over this month so far, following its pages. */
async function usageGroups(groupBy: "day" | "agent", agentId?: string): Promise<Group[]> {
  const { start, end } = monthSoFar(new Date());
  const groups: Group[] = [];
  let pageToken: string | undefined;
  do {
    const query = { start: start.toISOString(), end: end.toISOString(), group_by: groupBy, page_size: 100, ...(agentId ? { agent_id: agentId } : {}), ...(pageToken ? { page_token: pageToken } : {}) };
    const { data, error, response } = await api.GET("/v1/usage", { params: { query } });
    if (!data) throw new Error(describe(error, response));
    groups.push(...(data.groups ?? []));
    pageToken = data.nextPageToken || undefined;
  } while (pageToken);
  return groups;
}

/** Every day of the month so far, with zeros for the days without usage (which have no group). */
async function usagePerDay(agentId?: string): Promise<Day[]> {
  const byKey = new Map((await usageGroups("day", agentId)).map((group) => [group.key ?? "", figuresOf(group.totals)]));
  return monthSoFar(new Date()).days.map((start) => ({ start, ...(byKey.get(start.toISOString().slice(0, 10)) ?? { tokens: 0, turns: 0, costCents: 0 }) }));
}

const money = (cents: string | number | undefined, currency = "USD") => (Number(cents ?? 0) / 100).toLocaleString("en", { style: "currency", currency });

export function UsagePage({ tier }: { tier?: string }) {
  const [days, setDays] = useState<Day[] | null>(null);
  const [perAgent, setPerAgent] = useState<Map<string, Figures> | null>(null);
  const [chosen, setChosen] = useState("");
  const [agentDays, setAgentDays] = useState<Day[] | null>(null);
  const [agents, setAgents] = useState<Map<string, Agent>>(new Map());
  const [invoice, setInvoice] = useState<Invoice | null>(null);
  const [limits, setLimits] = useState<Limits | null>(null);
  const [notice, setNotice] = useState<Notice | null>(null);
  const fail = (text: string) => setNotice({ tone: "error", text });

  useEffect(() => {
    void listAllAgents().then((list) => setAgents(new Map(list.map((agent) => [agent.id ?? "", agent]))), (error: Error) => fail(error.message));
    void api.GET("/v1/usage/invoice-preview").then(({ data, error, response }) => (data ? setInvoice(data) : fail(describe(error, response))));
    void api.GET("/v1/rate-limits").then(({ data, error, response }) => (data ? setLimits(data) : fail(describe(error, response))));
    void usagePerDay().then(setDays, (error: Error) => fail(error.message));
    void usageGroups("agent").then((groups) => setPerAgent(new Map(groups.map((group) => [group.key ?? "", figuresOf(group.totals)]))), (error: Error) => fail(error.message));
  }, []);

  useEffect(() => {
    setAgentDays(null);
    if (!chosen) return;
    let current = true;
    void usagePerDay(chosen).then(
      (found) => current && setAgentDays(found),
      (error: Error) => current && fail(error.message),
    );
    return () => {
      current = false;
    };
  }, [chosen]);

  const name = (id: string) => agents.get(id)?.name ?? (id ? `agent ${id.slice(0, 8)}` : "no agent");
  const currency = invoice?.currency || "USD";
  const agentIds = [...(perAgent?.keys() ?? [])].filter((id) => id !== "");
  const allTokens = [...(perAgent?.values() ?? [])].reduce((sum, each) => sum + each.tokens, 0) || 1;

  return (
    <Page title="Usage">
      <StatusLine notice={notice} testid="usage-status" />
      <p>
        Plan: <strong>{enumWords(invoice?.tier ?? tier, "TIER_")}</strong>
        {invoice && (
          <>
            {" "}
            · this month so far: <strong data-testid="invoice-total">{money(invoice.totalCents, currency)}</strong>
            {invoice.final ? " (final)" : " (preview)"}
          </>
        )}
      </p>
      <p class="muted">
        Cost below is the list price of the usage at your plan's prices, before what the plan includes: your invoice charges only the part past the included quantities{invoice?.tier === "TIER_FREE" ? " (and on the free plan nothing is charged, so it is always zero)" : ""}.
      </p>
      <section class="card" aria-labelledby="per-day">
        <h2 id="per-day">Tokens, turns and cost per day</h2>
        {days === null ? <p>Loading usage…</p> : <DailyChart days={days} currency={currency} what="all agents" testid="usage-chart" tableTestid="usage-per-day" />}
      </section>
      <section class="card" aria-labelledby="per-agent">
        <h2 id="per-agent">Per agent this month</h2>
        {perAgent === null ? (
          <p>Loading usage per agent…</p>
        ) : perAgent.size === 0 ? (
          <p class="muted">No usage this month yet.</p>
        ) : (
          <DataTable label="Usage per agent" columns={["Agent", "Tokens", "Turns", "Cost", "Share of tokens"]} testid="usage-per-agent">
            {[...perAgent].map(([agent, figures]) => {
              const share = Math.round((figures.tokens / allTokens) * 100);
              return (
                <tr key={agent} data-testid="usage-agent-row" data-agent-id={agent}>
                  <th scope="row">{name(agent)}</th>
                  <td>{formatNumber(figures.tokens)}</td>
                  <td>{formatNumber(figures.turns)}</td>
                  <td>{money(figures.costCents, currency)}</td>
                  <td>
                    <span class="share" role="img" aria-label={`${share}%`}>
                      <span style={{ width: `${share}%` }} />
                    </span>{" "}
                    {share}%
                  </td>
                </tr>
              );
            })}
          </DataTable>
        )}
        {agentIds.length > 0 && (
          <>
            <p>
              <label>
                One agent's days:{" "}
                <select value={chosen} onChange={(event) => setChosen((event.target as HTMLSelectElement).value)} data-testid="usage-agent-choice">
                  <option value="">choose an agent</option>
                  {agentIds.map((id) => (
                    <option key={id} value={id}>
                      {name(id)}
                    </option>
                  ))}
                </select>
              </label>
            </p>
            {chosen && (agentDays === null ? <p>Loading {name(chosen)}'s usage…</p> : <DailyChart days={agentDays} currency={currency} what={name(chosen)} testid="usage-agent-chart" tableTestid="usage-agent-per-day" />)}
          </>
        )}
      </section>
      <section class="card" aria-labelledby="quotas">
        <h2 id="quotas">Quotas and cost</h2>
        {!invoice ? (
          <p>Loading the invoice preview…</p>
        ) : (
          <div class="gauges">
            {(invoice.lineItems ?? []).map((item) => {
              const used = Number(item.quantity ?? 0);
              const name = item.description || enumWords(item.meter, "METER_");
              if (!item.hasAllowance) {
                return (
                  <div key={item.meter} class="gauge" data-testid="quota-gauge" data-meter={item.meter} data-allowance="">
                    <h3>{name}</h3>
                    <p>
                      {formatNumber(used)} {item.unit}: your plan neither limits nor prices this.
                    </p>
                  </div>
                );
              }
              // The allowance is the plan's, not the part of the usage it covers (includedQuantity).
              const allowance = Number(item.allowanceQuantity ?? 0);
              const percent = allowance > 0 ? Math.min(100, Math.round((used / allowance) * 100)) : 100;
              const past = item.hardLimit ? "refused past it" : "charged past it";
              return (
                <div key={item.meter} class="gauge" data-testid="quota-gauge" data-meter={item.meter} data-allowance={allowance}>
                  <h3>{name}</h3>
                  <meter min={0} max={Math.max(allowance, used, 1)} low={allowance * 0.8} high={allowance} optimum={0} value={used} aria-label={`${name}: ${used} of ${allowance} ${item.unit ?? ""}`} />
                  <p>
                    {formatNumber(used)} of {formatNumber(allowance)} {item.unit} included ({percent}%; {past})
                    {Number(item.overageQuantity ?? 0) > 0 ? `; ${formatNumber(item.overageQuantity)} over, ${money(item.amountCents, currency)}` : ""}
                  </p>
                </div>
              );
            })}
          </div>
        )}
      </section>
      <section class="card" aria-labelledby="limits">
        <h2 id="limits">Rate limits</h2>
        {!limits ? (
          <p>Loading your rate-limit standing…</p>
        ) : (
          <>
            <p data-testid="rate-limit-standing">
              {limits.admitted ? "You are within your rate limits." : `You are over a rate limit: wait ${limits.retryAfterSeconds ?? 0} s.`} Counted {limits.counting === "off" ? "nowhere (limits are off)" : `in ${limits.counting}`}, as {/^[aeiou]/i.test(limits.clientClass) ? "an" : "a"} {limits.clientClass} client.
            </p>
            <DataTable label="Rate limits" columns={["Limit", "Remaining now", "Allows", "Full again in"]}>
              {limits.limits.map((limit) => (
                <tr key={`${limit.scope}-${limit.name}`}>
                  <th scope="row">
                    {limit.name} <span class="muted">({limit.scope})</span>
                  </th>
                  <td>{formatNumber(limit.remaining)}</td>
                  <td>
                    {formatNumber(limit.limit)} per {limit.windowSeconds} s, {formatNumber(limit.burst)} at once
                  </td>
                  <td>{limit.resetSeconds} s</td>
                </tr>
              ))}
            </DataTable>
          </>
        )}
      </section>
    </Page>
  );
}


function DailyChart({ days, currency, what, testid, tableTestid }: { days: Day[]; currency: string; what: string; testid: string; tableTestid: string }) {
  const holder = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = holder.current;
    if (!element) return;
    const bars = uPlot.paths.bars?.({ size: [0.6, 40] });
    const data: uPlot.AlignedData = [days.map((day) => day.start.getTime() / 1000), days.map((day) => day.tokens), days.map((day) => day.turns), days.map((day) => day.costCents)];
    const plot = new uPlot(
      {
        width: Math.max(280, element.clientWidth),
        height: 260,
        // Days are UTC calendar days (the billing calendar), whatever the browser's time zone.
        tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"),
        scales: { x: { time: true }, tokens: {}, turns: {}, cost: {} },
        axes: [
          {},
          { scale: "tokens", label: "tokens" },
          { scale: "turns", side: 1, label: "turns", grid: { show: false } },
          { scale: "cost", side: 1, label: "cost", grid: { show: false }, values: (_plot, splits) => splits.map((cents) => money(cents, currency)) },
        ],
        series: [
          { label: "day" },
          { label: "tokens", scale: "tokens", fill: "rgba(31, 95, 168, 0.55)", stroke: "#1f5fa8", ...(bars ? { paths: bars } : {}) },
          { label: "turns", scale: "turns", stroke: "#a3420f", width: 2 },
          { label: "cost", scale: "cost", stroke: "#2d7a3a", width: 2, dash: [6, 4], value: (_plot, cents) => (cents == null ? "" : money(cents, currency)) },
        ],
      },
      data,
      element,
    );
    const resize = () => plot.setSize({ width: Math.max(280, element.clientWidth), height: 260 });
    window.addEventListener("resize", resize);
    return () => {
      window.removeEventListener("resize", resize);
      plot.destroy();
    };
  }, [days, currency]);
  const today = days[days.length - 1];
  const month = days.reduce((sum, day) => ({ tokens: sum.tokens + day.tokens, turns: sum.turns + day.turns, costCents: sum.costCents + day.costCents }), { tokens: 0, turns: 0, costCents: 0 });
  return (
    <>
      <div
        class="chart"
        ref={holder}
        data-testid={testid}
        role="img"
        aria-label={`Tokens, turns and cost per day this month, ${what}; today ${today?.tokens ?? 0} tokens in ${today?.turns ?? 0} turns, ${money(today?.costCents, currency)}`}
        data-today-tokens={today?.tokens ?? 0}
      />
      <details>
        <summary>The same numbers as a table</summary>
        <table data-testid={tableTestid}>
          <caption class="muted">{what}, UTC days</caption>
          <thead>
            <tr>
              <th scope="col">Day</th>
              <th scope="col">Tokens</th>
              <th scope="col">Turns</th>
              <th scope="col">Cost</th>
            </tr>
          </thead>
          <tbody>
            {days.map((day) => (
              <tr key={day.start.getTime()}>
                <th scope="row">{day.start.toISOString().slice(0, 10)}</th>
                <td>{formatNumber(day.tokens)}</td>
                <td>{formatNumber(day.turns)}</td>
                <td>{money(day.costCents, currency)}</td>
              </tr>
            ))}
          </tbody>
          <tfoot>
            <tr>
              <th scope="row">Sum of the days</th>
              <td>{formatNumber(month.tokens)}</td>
              <td>{formatNumber(month.turns)}</td>
              <td>{money(month.costCents, currency)}</td>
            </tr>
          </tfoot>
        </table>
      </details>
    </>
  );
}
