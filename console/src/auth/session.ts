// Browser sign-in: OAuth 2.1 authorization code with PKCE (S256) against this origin's token service.
//
// The console is a public client (`macp-console`): it holds no secret, so what proves the code is
// ours is the verifier, made here with crypto.getRandomValues and kept in sessionStorage only for
// the round trip to /oauth2/authorize. The access token lives in memory only (a script injected
// later cannot read it from storage); the refresh token in sessionStorage, so a reload in the same
// tab stays signed in and closing the tab forgets it. Refresh rotates: every refresh answer's new
// refresh token replaces the old one, which the server no longer accepts.

export const CLIENT_ID = "macp-console";
const PENDING_KEY = "macp.console.pkce";
const REFRESH_KEY = "macp.console.refresh";
// Refresh this long before the access token expires, so no request is sent with a stale one.
const REFRESH_MARGIN_S = 30;

export interface Claims {
  sub: string;
  tenant_id: string;
  tier: string;
  scope: string;
  user_id?: string;
  client_id?: string;
  exp: number;
}

export interface SignedIn {
  state: "signed-in";
  claims: Claims;
  scopes: ReadonlySet<string>;
  userinfo: Record<string, unknown> | null;
}
export type Session = { state: "loading" } | { state: "signed-out"; reason?: string } | SignedIn;

interface TokenAnswer {
  access_token: string;
  refresh_token?: string;
  expires_in?: number;
}

interface Pending {
  verifier: string;
  state: string;
  returnTo: string;
}

export function redirectUri(): string {
  return `${location.origin}/console/callback`;
}

function base64url(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(bytes: number): string {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

export async function challengeOf(verifier: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/** The JWT's payload, unverified: the server verifies it on every call; this only reads who we are. */
export function decodeClaims(token: string): Claims {
  const part = token.split(".")[1];
  if (!part) throw new Error("the access token is not a JWT");
  const padded = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes)) as Claims;
}

type Listener = (session: Session) => void;

class SessionStore {
  private session: Session = { state: "loading" };
  private accessToken: string | null = null;
  private expiresAt = 0;
  private timer: number | undefined;
  private refreshing: Promise<string> | null = null;
  private readonly listeners = new Set<Listener>();

  get current(): Session {
    return this.session;
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private set(session: Session): void {
    this.session = session;
    for (const listener of this.listeners) listener(session);
  }

  /** On load: finish a callback, or resume with the tab's refresh token, or show the sign-in screen. */
  async start(): Promise<void> {
    if (location.pathname === "/console/callback") {
      await this.finishCallback();
      return;
    }
    if (sessionStorage.getItem(REFRESH_KEY)) {
      try {
        await this.refresh();
        return;
      } catch (error) {
        this.signedOut(`Your session ended (${String((error as Error).message)}); sign in again.`);
        return;
      }
    }
    this.set({ state: "signed-out" });
  }

  /** Sends the browser to the authorization endpoint, which shows the server's own login page. */
  async signIn(returnTo: string = location.pathname + location.search): Promise<void> {
    const verifier = randomText(48);
    const pending: Pending = { verifier, state: randomText(24), returnTo };
    sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
    const query = new URLSearchParams({
      response_type: "code",
      client_id: CLIENT_ID,
      redirect_uri: redirectUri(),
      code_challenge: await challengeOf(verifier),
      code_challenge_method: "S256",
      state: pending.state,
    });
    location.assign(`/oauth2/authorize?${query}`);
  }

  private async finishCallback(): Promise<void> {
    const params = new URLSearchParams(location.search);
    const raw = sessionStorage.getItem(PENDING_KEY);
    sessionStorage.removeItem(PENDING_KEY);
    const pending = raw ? (JSON.parse(raw) as Pending) : null;
    const leave = (to: string) => history.replaceState(null, "", to);
    const error = params.get("error");
    if (error) {
      leave("/console/");
      this.signedOut(`Sign-in was refused: ${params.get("error_description") ?? error}.`);
      return;
    }
    const code = params.get("code");
    if (!pending || !code || params.get("state") !== pending.state) {
      leave("/console/");
      this.signedOut("Sign-in failed: the answer did not match the request this tab made (state). Try again.");
      return;
    }
    // RFC 9207: the answer must come from our own issuer, which is this origin.
    if (params.get("iss") !== null && params.get("iss") !== location.origin) {
      leave("/console/");
      this.signedOut("Sign-in failed: the answer came from another issuer than this site.");
      return;
    }
    try {
      await this.tokenRequest({
        grant_type: "authorization_code",
        code,
        redirect_uri: redirectUri(),
        client_id: CLIENT_ID,
        code_verifier: pending.verifier,
      });
      leave(pending.returnTo.startsWith("/console/") && pending.returnTo !== "/console/callback" ? pending.returnTo : "/console/");
    } catch (failure) {
      leave("/console/");
      this.signedOut(`Sign-in failed: ${(failure as Error).message}`);
    }
  }

  private async tokenRequest(form: Record<string, string>): Promise<string> {
    const response = await fetch("/oauth2/token", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
      body: new URLSearchParams(form),
    });
    const body = (await response.json().catch(() => ({}))) as Partial<TokenAnswer> & {
      error?: string;
      error_description?: string;
      message?: string;
    };
    if (!response.ok || !body.access_token) {
      throw new Error(body.error_description ?? body.message ?? body.error ?? `the token endpoint answered ${response.status}`);
    }
    this.accept(body as TokenAnswer);
    return body.access_token;
  }

  private accept(answer: TokenAnswer): void {
    this.accessToken = answer.access_token;
    if (answer.refresh_token) sessionStorage.setItem(REFRESH_KEY, answer.refresh_token);
    const claims = decodeClaims(answer.access_token);
    const lifetime = answer.expires_in ?? Math.max(0, claims.exp - Date.now() / 1000);
    this.expiresAt = Date.now() + lifetime * 1000;
    window.clearTimeout(this.timer);
    if (sessionStorage.getItem(REFRESH_KEY)) {
      const due = Math.max(5, lifetime - REFRESH_MARGIN_S) * 1000;
      this.timer = window.setTimeout(() => void this.refresh().catch(() => this.signedOut("Your session ended; sign in again.")), due);
    }
    const previous = this.session.state === "signed-in" ? this.session.userinfo : null;
    this.set({ state: "signed-in", claims, scopes: new Set(claims.scope.split(" ").filter(Boolean)), userinfo: previous });
    if (previous === null) void this.loadUserinfo();
  }

  private async loadUserinfo(): Promise<void> {
    // OpenID Connect userinfo, when the token service offers it; a 404 just means it does not.
    try {
      const response = await fetch("/oauth2/userinfo", { headers: { authorization: `Bearer ${this.accessToken}` } });
      if (!response.ok) return;
      const userinfo = (await response.json()) as Record<string, unknown>;
      if (this.session.state === "signed-in") this.set({ ...this.session, userinfo });
    } catch {
      // Not offered: the token's claims say enough.
    }
  }

  refresh(): Promise<string> {
    if (!this.refreshing) {
      const token = sessionStorage.getItem(REFRESH_KEY);
      if (!token) return Promise.reject(new Error("not signed in"));
      this.refreshing = this.tokenRequest({ grant_type: "refresh_token", refresh_token: token, client_id: CLIENT_ID }).finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  /** A current access token, refreshed first when it is about to expire. */
  async token(): Promise<string> {
    if (this.accessToken && Date.now() < this.expiresAt - REFRESH_MARGIN_S * 1000) return this.accessToken;
    return this.refresh();
  }

  async signOut(): Promise<void> {
    const token = sessionStorage.getItem(REFRESH_KEY);
    if (token) {
      await fetch("/oauth2/revoke", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ token, client_id: CLIENT_ID }),
      }).catch(() => undefined);
    }
    this.signedOut("You are signed out.");
    history.replaceState(null, "", "/console/");
  }

  private signedOut(reason?: string): void {
    window.clearTimeout(this.timer);
    this.accessToken = null;
    this.expiresAt = 0;
    sessionStorage.removeItem(REFRESH_KEY);
    sessionStorage.removeItem(PENDING_KEY);
    this.set(reason ? { state: "signed-out", reason } : { state: "signed-out" });
  }
}

export const session = new SessionStore();

export function isAdmin(current: Session): boolean {
  // The token's scope decides what the edge allows; userinfo's `admin` says the same when offered.
  return current.state === "signed-in" && (current.scopes.has("audit:read") || current.userinfo?.["admin"] === true);
}
