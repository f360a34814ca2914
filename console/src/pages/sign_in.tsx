// The signed-out screen: one button that starts the authorization code flow.
import { useEffect, useState } from "preact/hooks";

import { session } from "../auth/session";

// The console's redirect URI is `<issuer>/console/callback`, compared exactly, so sign-in works only
// from the issuer's own origin (http://localhost:8080 is not http://127.0.0.1:8080). Said up front,
// with a link, rather than as the authorization server's error page after the click.
function useIssuer(): string | null {
  const [issuer, setIssuer] = useState<string | null>(null);
  useEffect(() => {
    void fetch("/.well-known/oauth-authorization-server")
      .then((response) => (response.ok ? response.json() : null))
      .then((metadata: { issuer?: string } | null) => setIssuer(metadata?.issuer?.replace(/\/$/, "") ?? null))
      .catch(() => setIssuer(null));
  }, []);
  return issuer;
}

export function SignInPage({ reason }: { reason?: string | undefined }) {
  const [busy, setBusy] = useState(false);
  const issuer = useIssuer();
  const elsewhere = issuer !== null && issuer !== location.origin;
  return (
    <main id="main" class="centered sign-in">
      <h1>MACP console</h1>
      <p>Watch your agents talk, manage them, and see what they cost.</p>
      <p role="status" aria-live="polite" data-testid="sign-in-status">
        {reason ?? ""}
      </p>
      {elsewhere ? (
        <p data-testid="sign-in-elsewhere">
          Sign-in works from this platform's own address: <a href={`${issuer}/console/`}>open the console at {issuer}</a>.
        </p>
      ) : (
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
      )}
    </main>
  );
}
