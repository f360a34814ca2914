"""The edge's HTTP API routes: resources (agents, conversations, messages), SSE, the
OpenAI-compatible completions, usage, audit and rate-limit status, each turned into gRPC calls."""
