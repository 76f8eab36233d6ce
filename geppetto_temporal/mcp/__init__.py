"""Tools from Model Context Protocol servers, run durably (docs/mcp.md).

The worker registers servers (`McpServer`: a stdio command line or a Streamable HTTP
URL, with secrets named by environment variable); an engine selects them by name
with `EngineBuilder.mcp("name")`. Needs the `mcp` extra on workers.
"""

from geppetto_temporal.mcp._config import (
    MCP_ENV,
    MCP_FILE_ENV,
    McpServer,
    McpServers,
    load_mcp_file,
    mcp_servers_from_env,
    parse_mcp_server,
    parse_mcp_servers,
)
from geppetto_temporal.mcp._models import PREFIX_SEPARATOR, McpSelection, McpToolDef, prefixed

__all__ = [
    "MCP_ENV",
    "MCP_FILE_ENV",
    "PREFIX_SEPARATOR",
    "McpSelection",
    "McpServer",
    "McpServers",
    "McpToolDef",
    "load_mcp_file",
    "mcp_servers_from_env",
    "parse_mcp_server",
    "parse_mcp_servers",
    "prefixed",
]
