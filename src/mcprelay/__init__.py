"""The MCP gateway relay."""
