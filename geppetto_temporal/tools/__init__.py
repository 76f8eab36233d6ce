"""Tools: typed Python functions the model can call, each run as a Temporal activity."""

from geppetto_temporal.tools._config import (
    ToolActivityOptions,
    ToolChoice,
    ToolConfig,
    ToolErrorHandling,
)
from geppetto_temporal.tools._registry import ToolRegistry
from geppetto_temporal.tools._tool import (
    Tool,
    ToolArgumentsError,
    ToolContext,
    ToolDefinition,
    tool,
)

__all__ = [
    "Tool",
    "ToolActivityOptions",
    "ToolArgumentsError",
    "ToolChoice",
    "ToolConfig",
    "ToolContext",
    "ToolDefinition",
    "ToolErrorHandling",
    "ToolRegistry",
    "tool",
]
