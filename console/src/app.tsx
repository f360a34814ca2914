// The console's shell: who is signed in (tenant, plan), the navigation, and the page of the path.
import { useEffect, useState } from "preact/hooks";

import { isAdmin, session, type Session } from "./auth/session";
import { AgentsPage } from "./pages/agents";
import { AuditPage } from "./pages/audit";
import { ConversationsPage } from "./pages/conversations";
import { NotFoundPage } from "./pages/not_found";
import { SignInPage } from "./pages/sign_in";
import { UsagePage } from "./pages/usage";
import { RoomPage } from "./room/room";
import { onLinkClick, usePath } from "./router";
import { enumWords } from "./ui/status";

function useSession(): Session {
  const [current, setCurrent] = useState(session.current);
  useEffect(() => {
    const unsubscribe = session.subscribe(setCurrent);
    // The session may have moved on between the first render and this effect (start() decides
    // "signed out" without waiting for anything): catch up with it.
    setCurrent(session.current);
    return unsubscribe;
  }, []);
  return current;
}

const ROOM = /^\/conversations\/([0-9a-fA-F-]{36})$/;

export function App() {
  const current = useSession();
  const path = usePath();
  useEffect(() => {
    document.addEventListener("click", onLinkClick);
    return () => document.removeEventListener("click", onLinkClick);
  }, []);

  if (current.state === "loading") {
    return (
      <main id="main" class="centered">
        <h1>MACP console</h1>
        <p role="status">Signing in…</p>
      </main>
    );
  }
  if (current.state === "signed-out") return <SignInPage reason={current.reason} />;

  const admin = isAdmin(current);
  const room = ROOM.exec(path);
  let page;
  let title;
  if (path === "/" || path === "/conversations") [page, title] = [<ConversationsPage />, "Conversations"];
  else if (path === "/agents") [page, title] = [<AgentsPage />, "Agents"];
  else if (path === "/usage") [page, title] = [<UsagePage tier={current.claims.tier} />, "Usage"];
  else if (path === "/audit" && admin) [page, title] = [<AuditPage />, "Audit log"];
  else if (room?.[1]) [page, title] = [<RoomPage key={room[1]} conversationId={room[1]} />, "Conversation"];
  else [page, title] = [<NotFoundPage />, "Not found"];
  document.title = `${title} · MACP console`;

  const links: [string, string][] = [
    ["/console/conversations", "Conversations"],
    ["/console/agents", "Agents"],
    ["/console/usage", "Usage"],
  ];
  if (admin) links.push(["/console/audit", "Audit log"]);
  const here = path === "/" ? "/conversations" : path;
  // Userinfo's preferred_username (docs/sign-in.md), else the token's user id until it has answered.
  const who = (current.userinfo?.["preferred_username"] as string | undefined) ?? current.claims.user_id ?? current.claims.sub;

  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <span class="brand">MACP console</span>
        <nav aria-label="Main">
          <ul>
            {links.map(([href, label]) => (
              <li key={href}>
                <a href={href} aria-current={here.startsWith(href.slice("/console".length)) ? "page" : undefined}>
                  {label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="who" data-testid="who">
          <span>
            <span class="label">Tenant</span> <strong data-testid="tenant">{current.claims.tenant_id}</strong>
          </span>
          <span>
            <span class="label">Plan</span> <strong data-testid="plan">{enumWords(current.claims.tier, "TIER_")}</strong>
          </span>
          <span class="user" title={who}>
            {who}
          </span>
          <button type="button" class="secondary" onClick={() => void session.signOut()}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {page}
      </main>
    </>
  );
}
