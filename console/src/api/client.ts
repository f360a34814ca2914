// The typed client of the edge's REST API: openapi-fetch over the types openapi-typescript generated
// from /v1/openapi.json (schema.d.ts, by scripts/gen_console_api.py). A route, parameter or body the
// edge changes is a type error here, not a surprise in the browser.
import createClient, { type Middleware } from "openapi-fetch";

import { session } from "../auth/session";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Agent = Schemas["macp.conversation.v1.Agent"];
export type Conversation = Schemas["macp.conversation.v1.Conversation"];
export type Message = Schemas["macp.conversation.v1.Message"];
export type ApiError = Schemas["Error"];

const bearer: Middleware = {
  async onRequest({ request }) {
    request.headers.set("authorization", `Bearer ${await session.token()}`);
    return request;
  },
};

export const api = createClient<paths>({ baseUrl: location.origin });
api.use(bearer);

/** What went wrong, in words a person reads: the edge's own message, and what the status means. */
export function describe(error: unknown, response?: Response): string {
  const body = (error ?? {}) as Partial<ApiError> & { error_description?: string };
  const said = body.message ?? body.error_description ?? "";
  const status = response?.status ?? 0;
  switch (status) {
    case 409:
    case 412:
      return `Someone changed this since you opened it (version conflict, ${status}): reload it and apply your change again. ${said}`.trim();
    case 429: {
      const wait = response?.headers.get("retry-after");
      return `Rate limited: too many requests${wait ? `; try again in ${wait} s` : ""}. ${said}`.trim();
    }
    case 403:
      return `Not allowed: ${said || "your account may not do this"}.`;
    case 404:
      return `Not found: ${said || "it does not exist, or it belongs to another tenant"}.`;
    case 401:
      return "Your session ended: sign in again.";
    default:
      if (body.code === "RESOURCE_EXHAUSTED") return `Quota refused: ${said}`;
      if (status >= 500 || status === 0) return `The platform could not answer (${status || "no connection"}): ${said || "try again shortly"}.`;
      return said || `The request failed (${status}).`;
  }
}

/** An If-Match header for a resource's etag: the JSON `etag` field is bare, the header quotes it
 * (RFC 9110 section 8.8.3, a strong entity tag), and the edge refuses a bare one. */
export function ifMatch(etag: string | undefined): { "if-match": string } {
  return { "if-match": `"${etag ?? ""}"` };
}
