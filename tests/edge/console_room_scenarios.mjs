// Each scenario builds a room from live event frames and stored pages in a given order and prints
// its entries; `T` and `M` are a turn's and its message's ids, `U` the user's message before it.
// Run by tests/edge/test_console_room_merge.py, next to model.ts compiled as model.mjs.
import { EMPTY_ROOM, applyEvent, applyEvents, mergeStored } from "./model.mjs";

const names = (id) => `name-${id}`;
const event = (id, kind, payload) => ({ type: "event", conversation_id: "c", event_id: id, kind, event: { event_id: id, time: "", [kind]: payload } });
const started = event("1-0", "turn_started", { turn_id: "T", agent_id: "A" });
const deltas = [event("1-1", "token_delta", { turn_id: "T", agent_id: "A", text: "Hel" }), event("1-2", "token_delta", { turn_id: "T", agent_id: "A", text: "lo" })];
const completed = event("1-3", "turn_completed", { turn_id: "T", agent_id: "A", outcome: "TURN_OUTCOME_COMPLETED", message_id: "M", text: "Hello" });
const user = { id: "U", role: "MESSAGE_ROLE_USER", authorId: "u", text: "Hi", sequence: "1" };
const answer = { id: "M", role: "MESSAGE_ROLE_AGENT", authorId: "A", text: "Hello", turnId: "T", sequence: "2" };
const later = { id: "L", role: "MESSAGE_ROLE_USER", authorId: "u", text: "Thanks", sequence: "3" };
const shown = (state) => state.entries.map((e) => ({ id: e.messageId, turn: e.turnId, text: e.text, state: e.state }));

const live = applyEvents(EMPTY_ROOM, [started, ...deltas, completed], names);
const results = {
  // Live first (events held while the history was read), then the page holding the same answer.
  live_then_stored: shown(mergeStored(live, [later, answer, user])),
  // The page first (a read again after the first live event), then the answer's completion.
  stored_then_live: shown(applyEvent(mergeStored(EMPTY_ROOM, [answer, user]), completed, names)),
  // Still streaming when the history was read: the page does not have it yet.
  streaming_then_stored: shown(mergeStored(applyEvents(EMPTY_ROOM, [started, ...deltas], names), [user])),
  // The same page merged twice, and a message twice in one page.
  page_twice: shown(mergeStored(mergeStored(live, [user, answer]), [user, answer, user])),
  // A message stored in the gap, seen only when the newest page is read again.
  gap: shown(mergeStored(mergeStored(live, [user, answer]), [later, answer, user])),
};
console.log(JSON.stringify(results));
