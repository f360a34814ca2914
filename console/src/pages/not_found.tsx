import { Page } from "../ui/status";

export function NotFoundPage({ what = "page" }: { what?: string }) {
  return (
    <Page title="Not found">
      <p>
        There is no such {what} here, or it belongs to another tenant. <a href="/console/conversations">Back to the conversations</a>.
      </p>
    </Page>
  );
}
