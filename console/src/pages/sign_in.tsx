// The signed-out screen: one button that starts the authorization code flow.
import { useState } from "preact/hooks";

import { session } from "../auth/session";

export function SignInPage({ reason }: { reason?: string | undefined }) {
  const [busy, setBusy] = useState(false);
  return (
    <main id="main" class="centered sign-in">
      <h1>MACP console</h1>
      <p>Watch your agents talk, manage them, and see what they cost.</p>
      <p role="status" aria-live="polite" data-testid="sign-in-status">
        {reason ?? ""}
      </p>
      <button
        type="button"
        disabled={busy}
        data-testid="sign-in"
        onClick={() => {
          setBusy(true);
          void session.signIn().catch(() => setBusy(false));
        }}
      >
        {busy ? "Opening sign-in…" : "Sign in"}
      </button>
    </main>
  );
}
