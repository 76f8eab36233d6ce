"""What travels through history for MCP tools: the engine's selection and the recorded tool lists.

None of it names a command, a URL or a secret: those stay in the worker's registration
(`McpServer`), and an engine selects a server by name.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from geppetto_temporal._wire import WireModel

#: Server names: letters, digits, '_' and '-', so `<server>__<tool>` is a valid tool name.
SERVER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
#: Between a server's name and its tool's in the name the model sees (docs/mcp.md).
PREFIX_SEPARATOR = "__"
#: Providers accept tool names up to this long.
MAX_TOOL_NAME = 64


def prefixed(server: str, tool: str) -> str:
    """The name the model calls an MCP server's tool by: `<server>__<tool>`."""
    return f"{server}{PREFIX_SEPARATOR}{tool}"


class McpSelection(WireModel):
    """An engine's use of one of the worker's MCP servers (`EngineBuilder.mcp`)."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(pattern=SERVER_NAME_PATTERN)
    #: The server's tools to offer, by their own (unprefixed) names; None: all of them.
    tools: tuple[str, ...] | None = None


class McpToolDef(WireModel):
    """One MCP tool as listed by its server and recorded in history."""

    model_config = ConfigDict(frozen=True)

    #: The name the model sees: `<server>__<tool>`.
    name: str
    server: str
    #: The tool's own name on its server.
    tool: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    #: The worker's per-server settings, None/False: the engine's tool defaults.
    timeout_seconds: float | None = None
    approval: bool = False


class McpToolsInput(WireModel):
    """The servers whose tools an inference offers."""

    servers: tuple[McpSelection, ...]


class McpServerTools(WireModel):
    """One server's tools, or why it could not list them."""

    server: str
    tools: list[McpToolDef] = Field(default_factory=list)
    #: The server is down, unknown to the worker, or refused: the message names it.
    error: str | None = None


class McpToolsResult(WireModel):
    """The tool lists of an inference's servers, in the engine's order (recorded in history)."""

    servers: list[McpServerTools] = Field(default_factory=list)

    def tools(self) -> list[McpToolDef]:
        return [tool for server in self.servers for tool in server.tools]
