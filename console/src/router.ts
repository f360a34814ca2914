// A small client-side router over the History API: the edge answers every extension-less path
// under /console/ with index.html, so a reload or a shared link lands on the same page.
import { useEffect, useState } from "preact/hooks";

const BASE = "/console";
const listeners = new Set<() => void>();

export function navigate(to: string, replace = false): void {
  const url = to.startsWith(BASE) ? to : BASE + to;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  for (const listener of listeners) listener();
}

window.addEventListener("popstate", () => {
  for (const listener of listeners) listener();
});

/** The current path below /console ("/", "/agents", "/conversations/<id>"). */
export function usePath(): string {
  const [path, setPath] = useState(currentPath());
  useEffect(() => {
    const update = () => setPath(currentPath());
    listeners.add(update);
    return () => void listeners.delete(update);
  }, []);
  return path;
}

export function currentPath(): string {
  const rest = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : location.pathname;
  return rest === "" ? "/" : rest;
}

/** Intercepts plain left clicks on in-app links so they do not reload the page. */
export function onLinkClick(event: MouseEvent): void {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const anchor = (event.target as Element | null)?.closest?.("a");
  const href = anchor?.getAttribute("href");
  if (!anchor || !href || !href.startsWith(BASE + "/") || anchor.target || anchor.hasAttribute("download")) return;
  event.preventDefault();
  navigate(href);
}
