"""Tool-loop policy: which tools, how many at once, and what a tool error does."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field

from geppetto_temporal._wire import WireModel
from geppetto_temporal.retry import RetrySpec


class ToolChoice(StrEnum):
    """Whether the model may, must, or must not call tools."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


class ToolErrorHandling(StrEnum):
    """What a failing tool call does to the loop.

    `continue` hands the error to the model as the tool result; `abort` ends the
    inference as failed; `retry` lets Temporal retry the tool activity with its
    retry policy and hands the final error to the model.
    """

    CONTINUE = "continue"
    ABORT = "abort"
    RETRY = "retry"


class ToolConfig(WireModel):
    """The tool policy of an engine (geppetto's `tools.ToolConfig`)."""

    model_config = ConfigDict(frozen=True)

    tool_choice: ToolChoice = ToolChoice.AUTO
    max_parallel_tools: int = Field(default=3, ge=1)
    #: Names of the tools the model may use; None means every tool the worker has.
    allowed_tools: tuple[str, ...] | None = None
    error_handling: ToolErrorHandling = ToolErrorHandling.CONTINUE
    #: Default per-call timeout; a tool's own `timeout` wins.
    timeout_seconds: float = Field(default=30.0, gt=0)
    #: Default retry policy; a tool's own policy wins.
    retry: RetrySpec = RetrySpec()
    #: A tool activity that stops heartbeating this long (its worker died) is retried elsewhere.
    heartbeat_seconds: float = Field(default=4.0, gt=0)
    #: fnmatch patterns of tool names whose calls wait for a person's decision
    #: (docs/approvals.md), besides tools declared with `tool(approval=True)`.
    require_approval: tuple[str, ...] = ()
    #: Tool names approved for the rest of the session ("approve and remember"):
    #: their calls run without asking. The session fills it in.
    approved_tools: tuple[str, ...] = ()
    #: A call still undecided this long after it was asked about is denied; None: wait forever.
    approval_timeout_seconds: float | None = Field(default=None, gt=0)
    #: What the approval timeout decides: `deny` (the default) or `approve`.
    approval_on_timeout: Literal["deny", "approve"] = "deny"


class ToolActivityOptions(WireModel):
    """How the workflow schedules one tool's activity, as reported by the worker that owns it."""

    model_config = ConfigDict(frozen=True)

    timeout_seconds: float
    retry: RetrySpec
    #: Run as a local activity (see `tool(local=True)`).
    local: bool = False
    #: Declared with `tool(approval=True)`: each call waits for a person's decision.
    approval: bool = False
    #: An MCP tool (docs/mcp.md): the worker's server and the tool's own name there.
    mcp_server: str | None = None
    mcp_tool: str | None = None
