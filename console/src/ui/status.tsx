// Status messages in a live region, so a screen reader hears what happened (saved, refused, ...).
import type { ComponentChildren } from "preact";

export type Tone = "info" | "ok" | "error";
export interface Notice {
  tone: Tone;
  text: string;
}

export function StatusLine({ notice, testid }: { notice: Notice | null; testid?: string }) {
  // role=status is polite; errors use role=alert so they are read at once.
  return (
    <p class={`status ${notice?.tone ?? ""}`} role={notice?.tone === "error" ? "alert" : "status"} aria-live={notice?.tone === "error" ? "assertive" : "polite"} data-testid={testid}>
      {notice?.text ?? ""}
    </p>
  );
}

export function Page({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <>
      <div class="page-head">
        <h1>{title}</h1>
        {actions}
      </div>
      {children}
    </>
  );
}

export function formatNumber(value: string | number | undefined): string {
  const number = typeof value === "string" ? Number(value) : (value ?? 0);
  return Number.isFinite(number) ? number.toLocaleString("en") : String(value);
}

export function formatTime(value: string | undefined): string {
  if (!value) return "";
  const time = new Date(value);
  return Number.isNaN(time.getTime()) ? value : time.toLocaleString("en", { dateStyle: "medium", timeStyle: "short" });
}

/** Proto enum names in words: TURN_POLICY_ROUND_ROBIN → "round robin". */
export function enumWords(value: string | undefined, prefix: string): string {
  return (value ?? "").replace(prefix, "").toLowerCase().replace(/_/g, " ");
}
