// Usage this month: tokens and turns per day (one usage query per day, grouped by agent, which also
// gives the per-agent totals), quota gauges and cost from the invoice preview (its line items are
// the plan's meters: used against included, and the overage charged), and the caller's rate-limit
// standing. Charts are uPlot (canvas); each has a table of the same numbers for screen readers.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

import { api, describe, type Agent, type Schemas } from "../api/client";
import { Page, StatusLine, enumWords, formatNumber, type Notice } from "../ui/status";
import { listAllAgents } from "./agents";

type Totals = Schemas["macp.metering.v1.UsageTotals"];
type Invoice = Schemas["macp.metering.v1.GetInvoicePreviewResponse"];
type Limits = Schemas["RateLimitStatus"];

interface Day {
  start: Date;
  tokens: number;
  turns: number;
  byAgent: Map<string, { tokens: number; turns: number }>;
}

const tokensOf = (totals: Totals | undefined) => Number(totals?.inputTokens ?? 0) + Number(totals?.outputTokens ?? 0);
const turnsOf = (totals: Totals | undefined) => Number(totals?.agentTurns ?? 0);

function daysOfMonthSoFar(now: Date): Date[] {
  const days: Date[] = [];
  for (let day = 1; day <= now.getUTCDate(); day += 1) days.push(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), day)));
  return days;
}

async function inBatches<T, R>(items: T[], size: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  for (let i = 0; i < items.length; i += size) results.push(...(await Promise.all(items.slice(i, i + size).map(work))));
  return results;
}

export function UsagePage({ tier }: { tier?: string }) {
  const [days, setDays] = useState<Day[] | null>(null);
  const [agents, setAgents] = useState<Map<string, Agent>>(new Map());
  const [invoice, setInvoice] = useState<Invoice | null>(null);
  const [limits, setLimits] = useState<Limits | null>(null);
  const [notice, setNotice] = useState<Notice | null>(null);

  useEffect(() => {
    const fail = (text: string) => setNotice({ tone: "error", text });
    void listAllAgents().then((list) => setAgents(new Map(list.map((agent) => [agent.id ?? "", agent]))), (error: Error) => fail(error.message));
    void api.GET("/v1/usage/invoice-preview").then(({ data, error, response }) => (data ? setInvoice(data) : fail(describe(error, response))));
    void api.GET("/v1/rate-limits").then(({ data, error, response }) => (data ? setLimits(data) : fail(describe(error, response))));
    void inBatches(daysOfMonthSoFar(new Date()), 4, async (start): Promise<Day> => {
      const end = new Date(start.getTime() + 86_400_000);
      const { data, error, response } = await api.GET("/v1/usage", {
        params: { query: { start: start.toISOString(), end: end.toISOString(), group_by: "agent", page_size: 100 } },
      });
      if (!data) throw new Error(describe(error, response));
      const byAgent = new Map((data.groups ?? []).map((group) => [group.key ?? "", { tokens: tokensOf(group.totals), turns: turnsOf(group.totals) }]));
      return { start, tokens: tokensOf(data.totals), turns: turnsOf(data.totals), byAgent };
    }).then(setDays, (error: Error) => fail(error.message));
  }, []);

  const perAgent = new Map<string, { tokens: number; turns: number }>();
  for (const day of days ?? [])
    for (const [agent, totals] of day.byAgent) {
      const sum = perAgent.get(agent) ?? { tokens: 0, turns: 0 };
      perAgent.set(agent, { tokens: sum.tokens + totals.tokens, turns: sum.turns + totals.turns });
    }
  const name = (id: string) => agents.get(id)?.name ?? (id ? `agent ${id.slice(0, 8)}` : "no agent");
  const currency = invoice?.currency || "USD";
  const money = (cents: string | number | undefined) => (Number(cents ?? 0) / 100).toLocaleString("en", { style: "currency", currency });

  return (
    <Page title="Usage">
      <StatusLine notice={notice} testid="usage-status" />
      <p>
        Plan: <strong>{enumWords(invoice?.tier ?? tier, "TIER_")}</strong>
        {invoice && (
          <>
            {" "}
            · this month so far: <strong data-testid="invoice-total">{money(invoice.totalCents)}</strong>
            {invoice.final ? " (final)" : " (preview)"}
          </>
        )}
      </p>
      <section class="card" aria-labelledby="per-day">
        <h2 id="per-day">Tokens and turns per day</h2>
        {days === null ? <p>Loading usage…</p> : <DailyChart days={days} />}
      </section>
      <section class="card" aria-labelledby="per-agent">
        <h2 id="per-agent">Per agent this month</h2>
        {perAgent.size === 0 ? (
          <p class="muted">No agent usage this month yet.</p>
        ) : (
          <div class="table-wrap">
            <table data-testid="usage-per-agent">
              <thead>
                <tr>
                  <th scope="col">Agent</th>
                  <th scope="col">Tokens</th>
                  <th scope="col">Turns</th>
                  <th scope="col">Share of tokens</th>
                </tr>
              </thead>
              <tbody>
                {[...perAgent].map(([agent, totals]) => {
                  const all = [...perAgent.values()].reduce((sum, each) => sum + each.tokens, 0) || 1;
                  const share = Math.round((totals.tokens / all) * 100);
                  return (
                    <tr key={agent} data-testid="usage-agent-row" data-agent-id={agent}>
                      <th scope="row">{name(agent)}</th>
                      <td>{formatNumber(totals.tokens)}</td>
                      <td>{formatNumber(totals.turns)}</td>
                      <td>
                        <span class="share" role="img" aria-label={`${share}%`}>
                          <span style={{ width: `${share}%` }} />
                        </span>{" "}
                        {share}%
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
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
              const included = Number(item.includedQuantity ?? 0);
              const percent = included > 0 ? Math.min(100, Math.round((used / included) * 100)) : 0;
              return (
                <div key={item.meter} class="gauge" data-testid="quota-gauge" data-meter={item.meter}>
                  <h3>{item.description || enumWords(item.meter, "METER_")}</h3>
                  <meter min={0} max={Math.max(included, used, 1)} low={included * 0.8} high={included} optimum={0} value={used} aria-label={`${item.description || item.meter}: ${used} of ${included} ${item.unit ?? ""}`} />
                  <p>
                    {formatNumber(used)} of {included > 0 ? formatNumber(included) : "no"} {item.unit} included{included > 0 ? ` (${percent}%)` : ""}
                    {Number(item.overageQuantity ?? 0) > 0 ? `; ${formatNumber(item.overageQuantity)} over, ${money(item.amountCents)}` : ""}
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
              {limits.admitted ? "You are within your rate limits." : `You are over a rate limit: wait ${limits.retryAfterSeconds ?? 0} s.`} Counted {limits.counting === "off" ? "nowhere (limits are off)" : `in ${limits.counting}`}, as a {limits.clientClass} client.
            </p>
            <div class="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Limit</th>
                    <th scope="col">Remaining</th>
                    <th scope="col">Of</th>
                    <th scope="col">Resets in</th>
                  </tr>
                </thead>
                <tbody>
                  {limits.limits.map((limit) => (
                    <tr key={`${limit.scope}-${limit.name}`}>
                      <th scope="row">
                        {limit.name} <span class="muted">({limit.scope})</span>
                      </th>
                      <td>{formatNumber(limit.remaining)}</td>
                      <td>
                        {formatNumber(limit.limit)} per {limit.windowSeconds} s
                      </td>
                      <td>{limit.resetSeconds} s</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </>
        )}
      </section>
    </Page>
  );
}

function DailyChart({ days }: { days: Day[] }) {
  const holder = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = holder.current;
    if (!element) return;
    const bars = uPlot.paths.bars?.({ size: [0.6, 40] });
    const data: uPlot.AlignedData = [days.map((day) => day.start.getTime() / 1000), days.map((day) => day.tokens), days.map((day) => day.turns)];
    const plot = new uPlot(
      {
        width: Math.max(280, element.clientWidth),
        height: 260,
        scales: { x: { time: true }, tokens: {}, turns: {} },
        axes: [{}, { scale: "tokens", label: "tokens" }, { scale: "turns", side: 1, label: "turns", grid: { show: false } }],
        series: [
          { label: "day" },
          { label: "tokens", scale: "tokens", fill: "rgba(31, 95, 168, 0.55)", stroke: "#1f5fa8", ...(bars ? { paths: bars } : {}) },
          { label: "turns", scale: "turns", stroke: "#a3420f", width: 2 },
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
  }, [days]);
  const today = days[days.length - 1];
  return (
    <>
      <div class="chart" ref={holder} data-testid="usage-chart" role="img" aria-label={`Tokens and turns per day this month; today ${today?.tokens ?? 0} tokens in ${today?.turns ?? 0} turns`} data-today-tokens={today?.tokens ?? 0} />
      <details>
        <summary>The same numbers as a table</summary>
        <table data-testid="usage-per-day">
          <thead>
            <tr>
              <th scope="col">Day</th>
              <th scope="col">Tokens</th>
              <th scope="col">Turns</th>
            </tr>
          </thead>
          <tbody>
            {days.map((day) => (
              <tr key={day.start.getTime()}>
                <th scope="row">{day.start.toISOString().slice(0, 10)}</th>
                <td>{formatNumber(day.tokens)}</td>
                <td>{formatNumber(day.turns)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </details>
    </>
  );
}
