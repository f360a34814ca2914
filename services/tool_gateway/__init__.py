"""The tool gateway: the one place agents and MCP clients reach MCP servers through."""
