"""Activities: the LLM step (streams, heartbeats) and the tool call, run by workers."""

from geppetto_temporal.activities._activities import InferenceActivities
from geppetto_temporal.contract import (
    LLM_STEP_ACTIVITY,
    TOOL_CALL_ACTIVITY,
    LLMStepInput,
    LLMStepResult,
    ToolCallInput,
    ToolCallResult,
)

__all__ = [
    "LLM_STEP_ACTIVITY",
    "TOOL_CALL_ACTIVITY",
    "InferenceActivities",
    "LLMStepInput",
    "LLMStepResult",
    "ToolCallInput",
    "ToolCallResult",
]
