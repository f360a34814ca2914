"""Example MCP servers, built on the official SDK: what the tool gateway's tests, benchmarks and demo
call through the gateway, as any tenant's own servers would be."""
