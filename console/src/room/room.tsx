import { Page } from "../ui/status";

export function RoomPage({ conversationId }: { conversationId: string }) {
  return <Page title="Conversation"><p>{conversationId}</p></Page>;
}
