// The official OpenAI Node SDK against a MACP front, as a Node tool would use it: list the models,
// retrieve the first, stream a completion with its id (usage in the last chunk), and record what
// the SDK raises for a bad key, an unknown model and, given a tenant without quota, a refused
// turn. Prints one JSON object for tests/e2e/test_openai_parity.py to check; any other failure
// (no body to read, a network error) makes it exit non-zero with the error on stderr.
//
// Environment: MACP_BASE_URL (`<front>/v1`), MACP_API_KEY (a token for the edge), and optionally
// MACP_QUOTA_API_KEY with MACP_QUOTA_MODEL (a tenant whose plan refuses every turn, and its agent).
import { randomUUID } from "node:crypto";

import OpenAI from "openai";

const baseURL = process.env.MACP_BASE_URL;
const HI = [{ role: "user", content: "say something" }];

function refusalOf(error) {
  if (!(error instanceof OpenAI.APIError)) {
    throw error;
  }
  return {
    class: error.constructor.name,
    status: error.status,
    type: error.type ?? null,
    code: error.code ?? null,
    param: error.param ?? null,
    message: error.message,
  };
}

async function refusal(call) {
  try {
    await call();
  } catch (error) {
    return refusalOf(error);
  }
  return null;
}

const client = new OpenAI({ baseURL, apiKey: process.env.MACP_API_KEY, maxRetries: 0 });
const models = [];
for await (const model of client.models.list()) {
  models.push(model);
}
const retrieved = await client.models.retrieve(models[0].id);

const stream = await client.chat.completions.create({
  model: retrieved.id,
  messages: HI,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let chunks = 0;
let lastUsage = null;
for await (const chunk of stream) {
  chunks += 1;
  text += chunk.choices[0]?.delta?.content ?? "";
  lastUsage = chunk.usage ?? null;
}

const badKey = new OpenAI({ baseURL, apiKey: "not-a-token", maxRetries: 0 });
const refusals = {
  badKeyList: await refusal(() => badKey.models.list()),
  badKeyCompletion: await refusal(() => badKey.chat.completions.create({ model: retrieved.id, messages: HI })),
  unknownModel: await refusal(() => client.models.retrieve("gpt-4o")),
  unknownCompletion: await refusal(() => client.chat.completions.create({ model: randomUUID(), messages: HI })),
};
if (process.env.MACP_QUOTA_API_KEY) {
  const broke = new OpenAI({ baseURL, apiKey: process.env.MACP_QUOTA_API_KEY, maxRetries: 0 });
  refusals.quota = await refusal(() =>
    broke.chat.completions.create({ model: process.env.MACP_QUOTA_MODEL, messages: HI }),
  );
}

console.log(JSON.stringify({ models, retrieved, stream: { text, chunks, lastUsage }, refusals }));
