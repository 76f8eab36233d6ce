"""Tool-loop policy: which tools, how many at once, and what a tool error does."""

from __future__ import annotations

from enum import StrEnum

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


class ToolActivityOptions(WireModel):
    """How the workflow schedules one tool's activity, as reported by the worker that owns it."""

    model_config = ConfigDict(frozen=True)

    timeout_seconds: float
    retry: RetrySpec
    #: Run as a local activity (see `tool(local=True)`).
    local: bool = False
