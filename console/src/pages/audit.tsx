import { Page } from "../ui/status";

export function AuditPage(_props: { tier?: string }) {
  return <Page title="Audit log"><p>Coming next.</p></Page>;
}
