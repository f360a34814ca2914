import { Page } from "../ui/status";

export function UsagePage(_props: { tier?: string }) {
  return <Page title="Usage"><p>Coming next.</p></Page>;
}
