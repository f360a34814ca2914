import { Page } from "../ui/status";

export function ConversationsPage(_props: { tier?: string }) {
  return <Page title="Conversations"><p>Coming next.</p></Page>;
}
