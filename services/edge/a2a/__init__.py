"""A2A v1.0 at the edge: every agent of a tenant is an A2A agent (docs/a2a.md).

- cards.py: the agent card, from the agent;
- routes.py: the card route and the JSON-RPC endpoint, on `a2a-sdk`'s dispatcher;
- handler.py: each A2A operation on MACP's services, as the caller;
- rounds.py: a round's events as an A2A task (a task is a round; its context is the conversation);
- task_records.py: where each task's round is, in Redis.
"""
