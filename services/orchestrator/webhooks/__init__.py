"""Conversation webhooks, delivered by the orchestrator processes that own the event logs
(docs/webhooks.md).

For each (subscription, conversation) one process at a time (a Redis lease, `cursors.py`) follows
the conversation's log after a cursor kept in Redis and posts its events one at a time, in order,
signed (`signing.py`): a 2xx moves the cursor on; anything else is retried with exponential backoff
and, after the attempt limit, dead-lettered (recorded at the conversation service, visible over
REST) before the cursor moves on (`stream.py`). The cursor moves only after the receiver's 2xx or
the dead letter's record, so a process killed mid-delivery leaves the event to the next holder,
which posts it again under the same `webhook-id`. The subscriptions (with their secrets, sealed)
come from the conversation service through its internal RPC, called with the orchestrator's own
client token (`targets.py`); `deliverer.py` keeps one task per (subscription, conversation).
"""
